"""modules.ui_components: InputAccordion is a (hidden) checkbox whose value says whether the
accordion is open; used as a context manager it holds the accordion's content."""
import gradio as gr


class InputAccordion(gr.Checkbox):
    def __init__(self, value, **kwargs):
        super().__init__(value, **kwargs)
        self.accordion = gr.Accordion(label=kwargs.get("label", "Accordion"), open=value)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, *exc):
        return self.accordion.__exit__(*exc)


class ToolButton(gr.Button):
    """A small square button (A1111's refresh buttons)."""
