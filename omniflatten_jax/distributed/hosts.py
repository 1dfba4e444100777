"""The hosts of a multi-controller run: joining the cluster, who writes, and proving agreement.

Every host runs the same program. Distributed bugs are silent (hosts that read different data
still produce a falling loss), so what must be equal on every host (the dataset's fingerprint,
the speech tokenizer, each global batch) is compared across hosts with `agree`, and a
difference is an error that names the hosts, never a warning.
"""

from __future__ import annotations

import hashlib
import logging

import jax
import numpy as np

log = logging.getLogger(__name__)


class HostMismatchError(RuntimeError):
    """Hosts that must hold the same value (data, tokenizer, batch) hold different ones."""


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Joins the cluster: explicit addresses when given, else JAX's auto-detection (TPU VMs,
    SLURM, Open MPI, Kubernetes)."""
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("give all of --coordinator_address, --num_processes and --process_id, "
                         "or none of them (auto-detection)")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    log.info("process %d of %d joined the cluster: %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(),
             jax.device_count())


def is_primary() -> bool:
    """Process 0 writes logs, metrics, TensorBoard, evaluation files and prepared data."""
    return jax.process_index() == 0


def digest(data: bytes | str) -> np.ndarray:
    """A value's sha256 as 8 int32 words: what hosts exchange to compare large values."""
    raw = data.encode() if isinstance(data, str) else data
    return np.frombuffer(hashlib.sha256(raw).digest(), dtype=np.int32).copy()


def agree(what: str, value: bytes | str, fix: str = "") -> None:
    """Raises `HostMismatchError` unless every host passes the same `value` (compared by hash)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    mine = digest(value)
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(jax.process_count(), -1)
    differ = [p for p in range(len(every)) if not np.array_equal(every[p], every[0])]
    if differ:
        raise HostMismatchError(f"{what} differs between hosts: process 0 and processes "
                                f"{differ} disagree{'; ' + fix if fix else ''}")


def any_host(flag: bool) -> bool:
    """True on every host when `flag` is true on any host (a collective: all hosts call it)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array([int(flag)], np.int32))
    return bool(np.asarray(flags).any())


def from_primary(value: str | None, max_bytes: int = 256) -> str:
    """Process 0's `value` on every host (a collective: all hosts call it; the others may
    pass None). For short strings: keys and fingerprints that process 0 alone computed."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    raw = (value or "").encode() if is_primary() else b""
    if len(raw) > max_bytes:
        raise ValueError(f"from_primary takes at most {max_bytes} bytes, got {len(raw)}")
    sent = multihost_utils.broadcast_one_to_all(np.frombuffer(raw.ljust(max_bytes, b"\0"),
                                                              np.uint8))
    return np.asarray(sent, np.uint8).tobytes().rstrip(b"\0").decode()
