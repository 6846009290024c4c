"""The one error type the nodes raise: ComfyUI shows `str(e)` in its error panel, so it is one line."""


class NodeInputError(ValueError):
    """Bad input to an spo-studio node (file, model pairing, widget value); the message is one line."""


def one_line(node: str, err: BaseException | str) -> NodeInputError:
    """`NodeInputError("<node>: <first line of err>")`, for re-raising a library error `from None`.

    A failure inside torch (a RuntimeError: out of memory, a dtype or device mismatch) gets a
    sentence saying what to change instead of torch's multi-line text."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "out of memory" in text.lower():
        return NodeInputError(f"{node}: out of memory; use a smaller batch, fewer candidates (k) or fp16 weights")
    if isinstance(err, RuntimeError) and not isinstance(err, NotImplementedError):
        return NodeInputError(f"{node}: the inputs do not fit together ({text[:200]}); check which model, "
                              "SPM and images are connected")
    return NodeInputError(f"{node}: {text}")


def check_spm(node: str, spm) -> None:
    """The `spm` input is a loaded preference model (API callers can wire anything)."""
    if not (callable(getattr(spm, "score", None)) and hasattr(spm, "model")):
        raise NodeInputError(f"{node}: the spm input is not a preference model; connect the output of Load SPM")
