"""One exception type for every user-facing failure: the CLI prints its message on one line."""


class TfoptError(Exception):
    """A bad input or a failed stage, explained in one line (no traceback for users)."""


class VerificationFailed(TfoptError):
    """The optimized model does not match the source within tolerance (the report is kept)."""
