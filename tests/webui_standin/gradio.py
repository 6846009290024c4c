"""Inert stand-in for the gradio 3.41 API surface the extension builds its UI with.

Components remember their constructor arguments and `.value`; layouts are context
managers; events record (fn, inputs, outputs) so a test can call them.
"""
from __future__ import annotations

_context: list["Block"] = []


class Block:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        self.children: list[Block] = []
        self.events: list[tuple] = []
        if _context:
            _context[-1].children.append(self)

    def __enter__(self):
        _context.append(self)
        return self

    def __exit__(self, *exc):
        _context.pop()
        return False

    def _event(self, fn=None, inputs=None, outputs=None, **kwargs):
        self.events.append((fn, inputs, outputs))

    click = change = select = upload = _event


class Component(Block):
    def __init__(self, value=None, *args, label=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.value, self.label = value, label


class Checkbox(Component):
    pass


class Slider(Component):
    def __init__(self, minimum=0, maximum=100, value=None, step=None, **kwargs):
        super().__init__(value if value is not None else minimum, **kwargs)
        self.minimum, self.maximum, self.step = minimum, maximum, step


class _Choices(Component):
    def __init__(self, choices=None, value=None, **kwargs):
        super().__init__(value, **kwargs)
        self.choices = list(choices or [])


class Radio(_Choices):
    pass


class Dropdown(_Choices):
    @staticmethod
    def update(**kwargs):
        return update(**kwargs)


class Textbox(Component):
    pass


class Markdown(Component):
    pass


class HTML(Component):
    pass


class Button(Component):
    pass


class Files(Component):
    pass


class Gallery(Component):
    pass


class Dataframe(Component):
    pass


class Row(Block):
    pass


class Column(Block):
    pass


class Group(Block):
    pass


class Accordion(Block):
    pass


class Blocks(Block):
    pass


def update(**kwargs):
    return {"__type__": "update", **kwargs}
