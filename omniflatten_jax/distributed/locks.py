"""One run per stage folder: a lock file naming its holder, with stale-lock detection.

Two runs on one stage would interleave checkpoints, double `metrics.jsonl` or crash inside
Orbax, and both may even "succeed". The first run writes ``STAGE/.lock`` (JSON: host, pid,
the process's start time, the command, when); a second run fails at once naming the holder.
A lock is stale, and taken over with a warning, when its holder is gone: on this host, its
pid no longer runs (or now belongs to another process, by start time); on another host (shared
storage), it stopped refreshing the file's time for `STALE_AFTER_S`. A lock that cannot be
read (empty: read between its holder's create and write, or torn by a crash) says nothing of
its holder, so it is held until nobody has touched it for `STALE_AFTER_S`, like a remote one.
On several hosts of one run, process 0 holds the lock for all of them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time

from etils import epath

from omniflatten_jax.distributed import hosts, paths

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0


class WorkdirLockedError(RuntimeError):
    """Another live run holds the stage's lock."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    started = holder.get("started_ticks")
    return started is None or _start_time(int(holder["pid"])) in (None, started)


def _stale(lock: epath.Path, holder: dict) -> bool:
    if holder.get("host") == socket.gethostname():
        return not _alive(holder)
    age = _age_s(lock)
    return age is None or age > STALE_AFTER_S


def _read_holder(lock: epath.Path, tries: int = 5, wait_s: float = 0.2) -> dict | None:
    """The lock's holder; None if it stays unreadable for `tries` reads (a holder writes its
    JSON right after creating the file, so an empty file is read again before giving up)."""
    for attempt in range(tries):
        try:
            holder = json.loads(lock.read_text())
            if isinstance(holder, dict) and holder:
                return holder
        except (OSError, ValueError):
            pass
        if attempt + 1 < tries:
            time.sleep(wait_s)
    return None


def _age_s(lock: epath.Path) -> float | None:
    try:
        return time.time() - lock.stat().mtime
    except OSError:  # gone meanwhile: its holder released it
        return None


def _describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0)))
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {since} "
            f"({holder.get('command', '?')})")


def _acquire(lock: epath.Path) -> None:
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started_ticks": _start_time(os.getpid()), "time": time.time(),
          "command": " ".join(sys.argv)[:300]}
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        if paths.is_url(str(lock)):  # object stores have no O_EXCL: check, then write
            if not lock.exists():
                lock.write_text(json.dumps(me))
                return
        else:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(me))
                return
        holder = _read_holder(lock)
        if holder is None:
            age = _age_s(lock)
            if age is not None and age <= STALE_AFTER_S:
                raise WorkdirLockedError(
                    f"{lock.parent} is in use by another run, or was: its lock {lock} cannot "
                    f"be read (touched {age:.0f} s ago; an unreadable lock is taken over once "
                    f"nobody has touched it for {STALE_AFTER_S / 60:.0f} minutes). Wait, or "
                    f"give this run another --workdir; if no run uses this stage, delete {lock}.")
        elif not _stale(lock, holder):
            raise WorkdirLockedError(
                f"{lock.parent} is in use by another run: {_describe(holder)}. Wait for it to "
                "finish or stop it, or give this run another --workdir. If that run is gone "
                f"(its host is down), delete {lock}.")
        log.warning("taking over the stale lock of %s (%s)", lock.parent,
                    _describe(holder) if holder else "unreadable and untouched")
        lock.unlink(missing_ok=True)
    raise WorkdirLockedError(f"could not take the lock {lock}: another run took it meanwhile")


@contextlib.contextmanager
def hold(stage_dir: str):
    """Holds `stage_dir`'s lock while the block runs (process 0 for every host); a held lock
    is an error on every host, naming the holder."""
    lock = epath.Path(paths.join(stage_dir, LOCK_NAME))
    error = None
    if hosts.is_primary():
        try:
            _acquire(lock)
        except WorkdirLockedError as e:
            error = e
        except OSError as e:  # a read-only or full disk: said before any long work
            error = PermissionError(f"cannot write to {stage_dir} ({e.strerror}): give a "
                                    "writable --workdir")
    if hosts.any_host(error is not None):
        raise error or WorkdirLockedError(f"process 0 could not lock {stage_dir} (see its "
                                          "log)")
    stop = threading.Event()
    beat = None
    if hosts.is_primary():
        def heartbeat():
            while not stop.wait(HEARTBEAT_S):
                with contextlib.suppress(OSError):
                    os.utime(lock) if not paths.is_url(str(lock)) else lock.write_text(
                        lock.read_text())
        beat = threading.Thread(target=heartbeat, name="workdir-lock", daemon=True)
        beat.start()
    try:
        yield
    finally:
        stop.set()
        if beat is not None:
            beat.join(timeout=5)
            with contextlib.suppress(OSError):
                lock.unlink(missing_ok=True)
