"""Preemption: a SIGTERM notice becomes a checkpoint at a step every host agrees on, then a stop.

TPU VMs, GKE and SLURM announce an eviction with SIGTERM, some seconds before the kill. In a
multi-host run only the notified host sees the signal, and all hosts must save the same step
(an Orbax save is a collective), so the decision is JAX's preemption sync service: the
coordination service forwards the notice to every host and picks the first step all of them
can still reach (`multihost_utils.reached_preemption_sync_point`). A single process, where
that service does not run, watches the signal itself.
"""

from __future__ import annotations

import logging
import signal
import threading

import jax

log = logging.getLogger(__name__)

EXIT_CODE = 143  # 128 + SIGTERM: schedulers read it as "terminated", so they requeue or retry


class Preempted(RuntimeError):
    """Raised after the preemption checkpoint is on disk: rerun the same command to resume."""

    def __init__(self, stage: str, step: int, directory: str):
        super().__init__(f"{stage}: preempted; saved step {step} to {directory}. Rerun the same "
                         "command to resume from it.")
        self.step = step


class PreemptionWatch:
    """Use as a context manager around the training loop; ask `reached(step)` every step.

    It also takes Ctrl-C (SIGINT) to the step boundary: Python raises KeyboardInterrupt
    wherever the main thread is, and where that is a garbage-collection callback (JAX has
    one) the exception is printed and dropped, and training went on. The first SIGINT now
    raises KeyboardInterrupt at the next `reached`; a second one, at once."""

    def __init__(self):
        self._multi_host = jax.process_count() > 1
        self._notified = False
        self._interrupted = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "PreemptionWatch":
        if not self._multi_host:
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
        if (threading.current_thread() is threading.main_thread()  # where handlers go
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _on_sigterm(self, signum, frame) -> None:
        if not self._notified:
            log.warning("SIGTERM: saving a checkpoint at the next step, then stopping")
        self._notified = True

    def _on_sigint(self, signum, frame) -> None:
        if self._interrupted:
            signal.default_int_handler(signum, frame)
        log.warning("Ctrl-C: stopping after this step (again to stop at once)")
        self._interrupted = True

    def reached(self, step: int) -> bool:
        """True at the step where every host saves and stops (the same step on every host).

        Every host must call it at every step from the same starting step. Raises
        KeyboardInterrupt after a Ctrl-C."""
        if self._interrupted:
            raise KeyboardInterrupt(f"interrupted after step {step}")
        if self._multi_host:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self._notified
