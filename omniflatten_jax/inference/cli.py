"""How the duplex and conversion commands report a failure: one line, then a non-zero exit.

A user who points a command at the wrong file needs to read which file and what to do, not a
page of traceback from Orbax or libsndfile. Our own errors already say both (they name the
file and the fix), so they are printed as they are, collapsed to one line. Anything else is an
error we did not foresee: its type is printed with it and ``--verbose`` shows where it came
from (the traceback), which is what a bug report needs.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

# What our code raises for bad input (a path, a file's contents, a setting); every message
# names the offending file and the fix. `AudioError`, `NonFiniteError`, `LayoutMismatchError`
# and the checkpoint errors are `ValueError`s; disk and permission problems are `OSError`s.
EXPECTED = (ValueError, OSError)


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="on an error, print the whole traceback, not only its message")


def one_line(error: BaseException) -> str:
    """The message on one line (some libraries' messages span several)."""
    text = " ".join(str(error).split())
    if isinstance(error, EXPECTED) and text:
        return text
    return f"{type(error).__name__}: {text} (an unexpected error: rerun with --verbose for the " \
           "traceback)"


@contextlib.contextmanager
def command_errors(verbose: bool) -> Iterator[None]:
    """Turns an exception inside into ``error: <one line>`` on stderr and exit status 1; with
    `verbose`, lets it propagate (Python prints the traceback, exit status 1 too)."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001  every failure ends in the one line
        if verbose:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(1)
