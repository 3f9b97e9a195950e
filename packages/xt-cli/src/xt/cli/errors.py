"""How the ``xt`` command reports failures.

* A user mistake (`xt.core.errors.XTError`: config, model config, data, layout, checkpoint) or a
  file that cannot be read (`OSError`) prints one line ``error: MESSAGE`` to stderr; exit status 1.
* `xt train` catches the first SIGINT / SIGTERM itself (`xt.core.engine.stop`): it saves a
  checkpoint, prints how to continue and exits with `EXIT_STOPPED` (75).
* Ctrl-C that reaches here (`KeyboardInterrupt`: outside the training loop, or a second Ctrl-C)
  prints ``interrupted: ...`` (for `xt train`: the last finished checkpoint, or that none was
  saved); exit status 130.
* With ``xt --debug`` or ``XT_DEBUG=1`` the full traceback is shown instead (for bug reports).

Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Callable, Iterator

import click

from xt.core.errors import XTError

__all__ = ["debug_from_env", "error_message", "reported_errors", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_STOPPED"]

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
#: `xt train` stopped by SIGINT/SIGTERM after saving a checkpoint: EX_TEMPFAIL of sysexits.h
#: ("try again later"), so a job scheduler can tell a clean preemption from a crash or a kill
EXIT_STOPPED = 75


def debug_from_env() -> bool:
    """True when ``XT_DEBUG`` is set to anything but ``""``, ``0``, ``false``, ``no`` or ``off``."""
    return os.environ.get("XT_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def error_message(err: BaseException) -> str:
    """The one-line text shown for a user error: its message; for an `OSError` with a file name
    ``FILE: REASON`` rather than Python's ``[Errno 2] ...`` form."""
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(err) or type(err).__name__


@contextlib.contextmanager
def reported_errors(debug: bool, also: tuple[type[Exception], ...] = (),
                    on_interrupt: Callable[[], str] | None = None) -> Iterator[None]:
    """Run the body; turn user errors and Ctrl-C into a message and an exit status.

    Args:
        debug: re-raise instead (the traceback is printed; Ctrl-C still exits 130).
        also: further exception types to treat as user errors (e.g. `ValueError` for `xt convert`).
        on_interrupt: called after Ctrl-C; returns what to say (e.g. the last good checkpoint).

    Raises:
        SystemExit: status 1 (`EXIT_ERROR`) for an `XTError`, `OSError` or one of `also`; 130
            (`EXIT_INTERRUPTED`) for `KeyboardInterrupt`. With `debug` the error itself propagates.
    """
    try:
        yield
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        note = ""
        if on_interrupt is not None:
            with contextlib.suppress(Exception):
                note = on_interrupt()
        click.echo(f"interrupted{': ' + note if note else ''}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except (XTError, OSError, *also) as e:
        if debug:
            raise
        click.echo(f"error: {error_message(e)}", err=True)
        sys.exit(EXIT_ERROR)
