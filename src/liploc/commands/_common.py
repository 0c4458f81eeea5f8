"""What every command shares: the consoles and the one way an error ends a command.

A command runs its library call inside :func:`reported_errors`: liploc's own errors
(:class:`~liploc.errors.LiplocError`: a missing file, a bad config, a map of another model...)
become one red ``error:`` line on stderr and exit status 1, a full disk becomes the same naming the
file that could not be written, and Ctrl-C, where the command says what was kept, becomes an
``interrupted:`` line and exit status 130. Anything else is a bug and keeps its traceback.

This module imports nothing heavy: the commands import their library inside the command function,
so that ``liploc --help`` and a mistyped argument answer before torch loads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer
from rich.markup import escape

from liploc.console import make_console, print_line
from liploc.errors import LiplocError

console = make_console()
err_console = make_console(stderr=True)

INTERRUPTED = 130
"""Exit status of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it)."""


def fail(err: Exception) -> NoReturn:
    """End the command with ``error: <err>`` on stderr and exit status 1."""
    print_line(err_console, f"[bold red]error:[/] {escape(str(err))}")
    raise typer.Exit(code=1)


@contextmanager
def reported_errors(
    writing: Path | None = None, interrupted: str | Callable[[], str] | None = None
) -> Iterator[None]:
    """Turn what a user can act on into a clean message and exit status (see the module doc).

    Args:
        writing: the folder the command writes, named when a full disk's error names no file.
        interrupted: what Ctrl-C leaves behind (or a function saying it); None: Ctrl-C is not
            caught here (the command handles it, or Python's default applies).
    """
    try:
        yield
    except LiplocError as err:
        fail(err)
    except OSError as err:
        from liploc.atomic import disk_full_error, is_space_error

        if not is_space_error(err):
            raise  # any other OSError is a bug and keeps its traceback
        fail(disk_full_error(err.filename or writing or Path.cwd(), err))
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        what = interrupted() if callable(interrupted) else interrupted
        print_line(err_console, f"interrupted: {what}")
        raise typer.Exit(code=INTERRUPTED) from None
