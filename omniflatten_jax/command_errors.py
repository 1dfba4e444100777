"""How every command reports a failure: one line, ``error: ...``, then exit status 1.

A user who points a command at the wrong file needs to read which file and what to do, not a
page of traceback from Orbax or libsndfile. Our own errors say both (they name the file,
setting or checkpoint and the fix), so they are printed as they are, collapsed to one line.
Anything else is an error we did not foresee: its type is printed with it, its traceback is
written to a file when the command has a place for one (run.py: ``WORKDIR/logs/``), and
``--verbose`` prints it, which is what a bug report needs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator

# What the library raises for bad input (a path, a file's contents, a setting): every message
# names the offending file and the fix. `AudioError`, `NonFiniteError`, `LayoutMismatchError`,
# `ConfigError` and the checkpoint errors are `ValueError`s; disk and permission problems are
# `OSError`s.
EXPECTED = (ValueError, OSError)


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="on an error, print the whole traceback, not only its message")


def one_line(error: BaseException) -> str:
    """The message on one line (some libraries' messages span several)."""
    return " ".join(str(error).split()) or type(error).__name__


@contextlib.contextmanager
def one_line_errors(verbose: bool, expected: tuple[type[BaseException], ...] = EXPECTED,
                    save_traceback: Callable[[str], str | None] | None = None
                    ) -> Iterator[None]:
    """Turns an exception inside into ``error: <one line>`` on stderr and exit status 1.

    `expected` errors print their message only; any other prints its type too and where its
    traceback went (`save_traceback`, given the text, returns the file it wrote, or None).
    With `verbose` the traceback is printed as well."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001  every failure ends in the one line
        text = traceback.format_exc()
        if verbose:
            sys.stderr.write(text)
        line = f"error: {one_line(e)}"
        if not isinstance(e, expected):
            line = f"error: {type(e).__name__}: {one_line(e)}"
            saved = save_traceback(text) if save_traceback else None
            if not verbose:
                line += (f" (traceback: {saved}; --verbose prints it)" if saved
                         else " (an unexpected error: rerun with --verbose for the traceback)")
        print(line, file=sys.stderr)
        sys.exit(1)


def traceback_file(folder: str) -> Callable[[str], str | None]:
    """A `save_traceback` writing ``FOLDER/error-TIME-PID.txt`` (None when it cannot)."""
    def save(text: str) -> str | None:
        from etils import epath

        from omniflatten_jax.distributed import paths

        path = paths.join(folder, time.strftime("error-%Y%m%d-%H%M%S") + f"-{os.getpid()}.txt")
        try:
            epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
            epath.Path(path).write_text(text)
        except OSError:
            return None
        return path
    return save
