"""Terminal conventions shared by every tfopt command: one-line errors, exit codes, progress on stderr.

Exit codes: 0 success, 1 verification failed (the report is kept), 3 verified but a fusion
did not happen (status "incomplete", the report is kept), 2 bad input or a failed stage (one line ``tfopt: error: ...`` on stderr, no traceback), 130 interrupted.
The error line holds at most :data:`ERROR_LINE_LIMIT` characters where the quotes of other
libraries' text can be shortened to fit (:func:`tfopt.errors.fit_line`); ``tfopt -v`` prints
those texts whole on the lines before it. ``TFOPT_TRACEBACK=1`` prints the traceback as
well, for bug reports.

Quiet by default: while a command runs, the libraries tfopt drives (ONNX Runtime, torch
and its exporters, transformers, TensorFlow, onnxscript) print nothing of their own,
neither Python warnings nor log records nor ONNX Runtime's C++ log; ``tfopt -v`` lets
all of it through (:func:`third_party_output`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
import warnings
from typing import Iterator

import click

from .errors import FusionIncomplete, TfoptError, VerificationFailed, fit_line, quoted_details

PROG = "tfopt"
ERROR_LINE_LIMIT = 200
EXIT_VERIFICATION_FAILED = 1
EXIT_ERROR = 2
EXIT_FUSION_INCOMPLETE = 3
EXIT_INTERRUPTED = 130
TRACEBACK_ENV = "TFOPT_TRACEBACK"


def error_line(message: str) -> str:
    """``tfopt: error: ...``: the message on one line, its quotes shortened to fit :data:`ERROR_LINE_LIMIT`."""
    prefix = f"{PROG}: error: "
    text = " ".join(str(message).split()) or "unknown error"
    return prefix + fit_line(text, ERROR_LINE_LIMIT - len(prefix))


def warning_line(message: str) -> str:
    first = " ".join(str(message).split("\n")[0].split())
    return f"{PROG}: warning: {first}"


def progress_printer(quiet: bool = False):
    """The ``ctx.progress`` callback of the CLI: one line per message on stderr."""
    if quiet:
        return lambda message: None
    return lambda message: click.echo(f"{PROG}: {message}", err=True)


def _fail(message: str, code: int, exc: BaseException | None = None) -> None:
    if exc is not None and os.environ.get(TRACEBACK_ENV):
        traceback.print_exception(exc, file=sys.stderr)
    if _error_details:
        for whole in quoted_details(str(message)):
            click.echo(f"{PROG}: in full: {whole}", err=True)
    click.echo(error_line(message), err=True)
    sys.exit(code)


_error_details = False  # set for the command running under ``tfopt -v``: the error's quotes are printed whole


def show_error_details(show: bool = True) -> None:
    """Print the whole text behind each quote of this command's error line (``tfopt -v``, ``optimize --verbose``)."""
    global _error_details
    _error_details = show


class OneLineErrors:
    """Mixin for click commands: every user-facing failure ends as one line and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        show_error_details(False)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _fail(exc.format_message() + where, EXIT_ERROR)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code or EXIT_ERROR)
        except VerificationFailed as exc:
            _fail(str(exc), EXIT_VERIFICATION_FAILED, exc)
        except FusionIncomplete as exc:
            _fail(str(exc), EXIT_FUSION_INCOMPLETE, exc)
        except TfoptError as exc:
            _fail(str(exc), EXIT_ERROR, exc)
        except (click.Abort, KeyboardInterrupt) as exc:
            _fail("interrupted", EXIT_INTERRUPTED, exc)
        sys.exit(result if isinstance(result, int) else 0)


class TfoptGroup(OneLineErrors, click.Group):
    pass


class TfoptCommand(OneLineErrors, click.Command):
    pass


# Read at import by libraries a command may import later: their log levels, TensorFlow's C++ log.
QUIET_ENVIRONMENT = {
    "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_VERBOSITY": "error", "TF_CPP_MIN_LOG_LEVEL": "3",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
ORT_DEFAULT_SEVERITY, ORT_FATAL_ONLY = 2, 4

_verbose = False


def is_verbose() -> bool:
    """True inside ``tfopt -v``: helpers that silence a library (``torch_kit.quiet_export``) then let it speak."""
    return _verbose


@contextlib.contextmanager
def third_party_output(verbose: bool, *, onnxruntime: bool = True) -> Iterator[None]:
    """Silence (``verbose`` False) or keep (True) every library's own output for the duration.

    Quiet means: Python warnings ignored; every log record dropped (``logging.disable``:
    libraries set their loggers' levels and handlers at import, so levels alone would not
    hold), with a do-nothing handler on the root logger so that a library's
    ``logging.warning`` cannot install ``basicConfig``'s stderr handler for good (the
    source of ``WARNING:root:...``); the switches in :data:`QUIET_ENVIRONMENT`; with
    ``onnxruntime``, ONNX Runtime's C++ log at fatal only; and native writes to fd 2
    dropped. Everything is restored on exit. tfopt's own progress, warnings and errors are
    echoed through ``sys.stderr`` and are not affected; tfopt itself does not log.
    """
    global _verbose
    previous_verbose = _verbose
    _verbose = verbose
    if verbose:
        show_error_details()  # kept after the command ends: the error line is printed after that
        try:
            yield
        finally:
            _verbose = previous_verbose
        return
    saved_environment = {name: os.environ.get(name) for name in QUIET_ENVIRONMENT}
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    disabled_before = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    root = logging.getLogger()
    dropping = logging.NullHandler()
    root.addHandler(dropping)
    ort = _set_ort_severity(ORT_FATAL_ONLY) if onnxruntime else False
    try:
        with warnings.catch_warnings(), _native_stderr_silenced():
            warnings.simplefilter("ignore")
            yield
    finally:
        if ort:
            _set_ort_severity(ORT_DEFAULT_SEVERITY)
        root.removeHandler(dropping)
        logging.disable(disabled_before)
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _verbose = previous_verbose


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null while Python's ``sys.stderr`` keeps the terminal.

    Native code writes to fd 2 directly, past every Python switch: TensorFlow's absl lines
    (``All log messages before absl::InitializeLog() ...``, ``Could not find cuda drivers``)
    obey no environment variable. tfopt's own lines go through ``sys.stderr`` and still
    show. A no-op when ``sys.stderr`` is not fd 2 (click's test runner, a redirected stream).
    """
    try:
        sys.stderr.flush()
        is_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        is_fd2 = False
    if not is_fd2:
        yield
        return
    terminal_fd = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    previous = sys.stderr
    terminal = open(  # noqa: SIM115 (closed below, after fd 2 is back)
        terminal_fd, "w", buffering=1, encoding=previous.encoding, errors=previous.errors or "backslashreplace", closefd=False
    )
    os.dup2(devnull, 2)
    sys.stderr = terminal
    try:
        yield
    finally:
        terminal.flush()
        sys.stderr = previous
        os.dup2(terminal_fd, 2)
        terminal.close()
        os.close(terminal_fd)
        os.close(devnull)


def _set_ort_severity(severity: int) -> bool:
    """ONNX Runtime's default C++ log severity (0 verbose .. 4 fatal); False when it is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return False
    onnxruntime.set_default_logger_severity(severity)
    return True
