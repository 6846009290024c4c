"""The one error type of LoRA file handling: its message is a single line naming the file."""


class LoraFileError(ValueError):
    """A LoRA file (or a LoRA/model pairing) that cannot be used; `str(e)` is one line for the user."""
