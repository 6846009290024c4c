"""The one error type the nodes raise: ComfyUI shows `str(e)` in its error panel, so it is one line."""
import contextlib
import os


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
    """The `spm` input is a loaded scorer (API callers can wire anything).

    Load SPM and Load Scorer both give an object with `score(images, prompts, timesteps)`; that call
    is all the nodes use, so it is all that is checked.
    """
    if not callable(getattr(spm, "score", None)):
        raise NodeInputError(
            f"{node}: the spm input is not a preference model; connect the output of Load SPM or Load Scorer")


# import name -> pip name, where they differ (requirements.txt lists pip names)
_PIP_NAMES = {"PIL": "pillow", "yaml": "pyyaml", "spo_studio": "spo-studio"}


@contextlib.contextmanager
def library_imports(node: str):
    """Around a node's imports of `spo_studio` (and, through it, diffusers, peft, safetensors...).

    A plain `git clone` into custom_nodes/ before `pip install -r requirements.txt` lacks them: the
    node then says in one line what to install instead of showing a ModuleNotFoundError traceback.
    """
    try:
        yield
    except ModuleNotFoundError as e:
        missing = (e.name or str(e)).partition(".")[0]
        requirements = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "requirements.txt")
        how = (f"python -m pip install -r {requirements}" if os.path.isfile(requirements)
               else "python -m pip install spo-studio")
        raise NodeInputError(
            f"{node}: the Python package '{_PIP_NAMES.get(missing, missing)}' is missing; install spo-studio's "
            f"requirements with the Python that runs ComfyUI ({how}) and restart ComfyUI"
        ) from None
