"""Orbax and TensorStore echo one failed save or restore hundreds of times; this keeps the one
error that is raised to the caller and drops exactly those echoes.

A restore or save that fails leaves TensorStore completing the other arrays' reads and writes,
each posting to an event loop Orbax has closed (``RuntimeError: Event loop is closed``, via
`sys.unraisablehook` or `sys.excepthook`); the other arrays' read coroutines, abandoned with
their own copy of the error, print it with TensorStore's whole spec when the garbage
collector finds them (``Exception ignored in: <coroutine object
_read_array_index_and_device_put>``, 60 lines each, in about a third of runs: it depends on
when the collector runs); asyncio logs "exception was never retrieved" for the abandoned
tasks, and Orbax logs the background save's traceback before re-raising it.
"""

from __future__ import annotations

import logging
import sys


def _quiet_closed_event_loop() -> None:
    """After a failed restore or save, TensorStore still completes the other arrays' reads
    and writes and posts each result to Orbax's event loop, which is closed by then: every
    post prints a ``RuntimeError: Event loop is closed`` traceback (through
    `sys.unraisablehook` or `sys.excepthook`), hundreds of lines hiding the one error that
    matters. Only exactly those are dropped; installed before restoring or saving, as they
    are printed before the failure reaches us."""
    def closed_loop(error) -> bool:
        return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"

    if not getattr(sys.excepthook, "_drops_closed_event_loop", False):
        previous_excepthook = sys.excepthook

        def excepthook(kind, value, tb):
            if not closed_loop(value):
                previous_excepthook(kind, value, tb)

        excepthook._drops_closed_event_loop = True
        sys.excepthook = excepthook
    if not getattr(sys.unraisablehook, "_drops_closed_event_loop", False):
        previous_unraisablehook = sys.unraisablehook

        def unraisablehook(unraisable):
            if not (closed_loop(unraisable.exc_value) or _abandoned_orbax_coroutine(unraisable)):
                previous_unraisablehook(unraisable)

        unraisablehook._drops_closed_event_loop = True
        sys.unraisablehook = unraisablehook


def _abandoned_orbax_coroutine(unraisable) -> bool:
    """An Orbax coroutine collected with its exception never awaited: one of the other
    arrays' reads or writes, left behind when the first failure was raised to the caller."""
    code = getattr(unraisable.object, "cr_code", None)
    return (code is not None and "orbax" in code.co_filename
            and isinstance(unraisable.exc_value, Exception))


def _unretrieved_after_failure(record: logging.LogRecord) -> bool:
    """Drops asyncio's "exception was never retrieved" for the reads and writes abandoned by
    a failed restore or save (whose error is raised to the caller instead)."""
    return "exception was never retrieved" not in record.getMessage()


def _orbax_background_error(record: logging.LogRecord) -> bool:
    """Drops the tracebacks Orbax logs for a failed background save: it re-raises the same
    error to the caller, which reports it in one line (`CheckpointSaveError`)."""
    return not ("orbax" in record.pathname and record.levelno >= logging.ERROR)


def quiet_background_failures() -> None:
    """One failed save or restore must read as one error, not hundreds of lines: filters
    for exactly the echoes of errors that are raised to the caller anyway."""
    _quiet_closed_event_loop()
    for name, only in (("asyncio", _unretrieved_after_failure),
                       ("absl", _orbax_background_error)):
        if only not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(only)
