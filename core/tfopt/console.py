"""Terminal conventions shared by every tfopt command: one-line errors, exit codes, progress on stderr.

Exit codes: 0 success, 1 verification failed (the report is kept), 2 bad input or a
failed stage (one line ``tfopt: error: ...`` on stderr, no traceback), 130 interrupted.
``TFOPT_TRACEBACK=1`` prints the traceback as well, for bug reports.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from .errors import TfoptError, VerificationFailed

PROG = "tfopt"
EXIT_VERIFICATION_FAILED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
TRACEBACK_ENV = "TFOPT_TRACEBACK"


def error_line(message: str) -> str:
    first = " ".join(str(message).split("\n")[0].split()) or "unknown error"
    return f"{PROG}: error: {first}"


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
    click.echo(error_line(message), err=True)
    sys.exit(code)


class OneLineErrors:
    """Mixin for click commands: every user-facing failure ends as one line and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _fail(exc.format_message() + where, EXIT_ERROR)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code or EXIT_ERROR)
        except VerificationFailed as exc:
            _fail(str(exc), EXIT_VERIFICATION_FAILED, exc)
        except TfoptError as exc:
            _fail(str(exc), EXIT_ERROR, exc)
        except (click.Abort, KeyboardInterrupt) as exc:
            _fail("interrupted", EXIT_INTERRUPTED, exc)
        sys.exit(result if isinstance(result, int) else 0)


class TfoptGroup(OneLineErrors, click.Group):
    pass


class TfoptCommand(OneLineErrors, click.Command):
    pass
