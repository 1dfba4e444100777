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


class HostMismatchError(ValueError):
    """Hosts that must hold the same value (settings, data, tokenizer, batch) hold different
    ones: the hosts' inputs are wrong, so it is a ValueError, printed as one line."""


# How long a process waits for the cluster (the coordinator to answer, every process to
# register) unless told otherwise: JAX's own default.
JOIN_TIMEOUT_S = 300
_PROBE_EVERY_S = 1.0
_REPORT_EVERY_S = 30.0


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: float = JOIN_TIMEOUT_S) -> None:
    """Joins the cluster: explicit addresses when given, else JAX's auto-detection (TPU VMs,
    SLURM, Open MPI, Kubernetes). Flags are checked first, and a process other than 0 waits
    for the coordinator's port itself (`reach_coordinator`): JAX aborts the whole process
    with a C++ stack trace when the coordinator never answers."""
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("give all of --coordinator_address, --num_processes and --process_id, "
                         "or none of them (auto-detection)")
    if not timeout_s > 0:
        raise ValueError(f"the cluster join timeout must be positive, not {timeout_s}")
    if all(given):
        if num_processes < 1:
            raise ValueError(f"--num_processes={num_processes}: a cluster has at least one "
                             "process")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id} is not one of the cluster's "
                             f"processes 0 to {num_processes - 1} (--num_processes="
                             f"{num_processes}): number the hosts from 0")
        if process_id != 0:
            reach_coordinator(coordinator_address, timeout_s)
    log.info("joining the cluster (waiting up to %.0f s for every process)", timeout_s)
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=max(1, int(round(timeout_s))))
    log.info("process %d of %d joined the cluster: %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(),
             jax.device_count())


def reach_coordinator(address: str, timeout_s: float) -> None:
    """Returns once process 0's coordinator accepts a connection at ``HOST:PORT``; a
    ConnectionError naming the address after `timeout_s` (progress logged meanwhile)."""
    import socket
    import time

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator_address={address!r} is not HOST:PORT")
    start = last_report = time.monotonic()
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=_PROBE_EVERY_S):
                return
        except OSError as e:
            why = e
        now = time.monotonic()
        if now - start >= timeout_s:
            raise ConnectionError(
                f"the coordinator at {address} did not answer within {timeout_s:.0f} s "
                f"({why}): start process 0 with the same --coordinator_address (it listens "
                "there), check the host and port are reachable from this host, or wait longer "
                "with --cluster_timeout_s")
        if now - last_report >= _REPORT_EVERY_S:
            last_report = now
            log.warning("waiting for the coordinator at %s (%.0f of %.0f s): %s", address,
                        now - start, timeout_s, why)
        time.sleep(min(_PROBE_EVERY_S, max(0.0, timeout_s - (now - start))))


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


# How much of each setting's value hosts exchange to show it in a mismatch message.
_SHOWN_BYTES = 40


def agree_on_settings(settings: dict[str, str]) -> None:
    """Raises `HostMismatchError` naming every setting (a name -> its value as text) that is
    not the same on every host, with process 0's value and the others': hosts given different
    flags would otherwise fail later inside a collective, or train on different data."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    names = sorted(settings)
    agree("the list of settings", "\n".join(names),
          "every host must run the same commit of the code")
    values = [str(settings[n]) for n in names]
    sums = np.stack([digest(v) for v in values])
    shown = np.stack([np.frombuffer(v.encode()[:_SHOWN_BYTES].ljust(_SHOWN_BYTES, b"\0"),
                                    np.uint8) for v in values])
    every_sum = np.asarray(multihost_utils.process_allgather(sums))
    every_shown = np.asarray(multihost_utils.process_allgather(shown))
    differ = []
    for i, name in enumerate(names):
        others = [p for p in range(len(every_sum)) if not np.array_equal(every_sum[p, i],
                                                                          every_sum[0, i])]
        if others:
            text = lambda p: every_shown[p, i].tobytes().rstrip(b"\0").decode(  # noqa: E731
                errors="replace")
            differ.append(f"{name} is {text(0)} on process 0 but " + ", ".join(
                f"{text(p)} on process {p}" for p in others))
    if differ:
        raise HostMismatchError(
            f"hosts were given different settings: {'; '.join(differ)}. Every host must run "
            "the same command (the same --config, --set and flags); nothing was done")
