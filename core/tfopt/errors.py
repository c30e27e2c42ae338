"""One exception type for every user-facing failure: the CLI prints its message on one line."""


def first_line(exc: BaseException) -> str:
    """An exception as one line (at most 500 characters): what TfoptError messages quote.

    Lines are joined, not cut at the first newline: the ONNX checker and ONNX Runtime put
    the node's name on the lines after their sentence.
    """
    text = " ".join(str(exc).split())
    return (text[:497] + "..." if len(text) > 500 else text) or type(exc).__name__


class TfoptError(Exception):
    """A bad input or a failed stage, explained in one line (no traceback for users)."""


class VerificationFailed(TfoptError):
    """The optimized model does not match the source within tolerance (the report is kept)."""
