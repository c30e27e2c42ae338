"""One exception type for every user-facing failure: the CLI prints its message on one line."""


def first_line(exc: BaseException) -> str:
    """An exception as one line (at most 300 characters): what TfoptError messages quote."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class TfoptError(Exception):
    """A bad input or a failed stage, explained in one line (no traceback for users)."""


class VerificationFailed(TfoptError):
    """The optimized model does not match the source within tolerance (the report is kept)."""
