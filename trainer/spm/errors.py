"""The SPM package's one error type: its message is a single line written for the user."""


class SPMError(ValueError):
    """A bad SPM file, bad scoring input or bad training setting; str(e) names what and how to fix it."""
