"""The one error type the nodes raise: ComfyUI shows `str(e)` in its error panel, so it is one line."""


class NodeInputError(ValueError):
    """Bad input to an spo-studio node (file, model pairing, widget value); the message is one line."""


def one_line(node: str, err: BaseException | str) -> NodeInputError:
    """`NodeInputError("<node>: <first line of err>")`, for re-raising a library error `from None`."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return NodeInputError(f"{node}: {text}")
