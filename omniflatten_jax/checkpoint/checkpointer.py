"""A training run's checkpoints: params, optimiser state, data position and metadata per step,
saved asynchronously, with failed saves reported as one error naming the step and the cause.
"""

from __future__ import annotations

import errno
import os
import re
import shutil

import jax
import orbax.checkpoint as ocp
from etils import epath

from omniflatten_jax.checkpoint import (
    CheckpointMeta,
    CheckpointMismatchError,
    check_complete,
    described_items,
    orbax_echoes,
    restore_items,
)
from omniflatten_jax.distributed import paths


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (a full or read-only disk, lost permissions)."""


class TrainCheckpointer:
    """Saves and restores a run's whole state: params, optimiser state, data position, meta.

    Saves are asynchronous (training continues while the arrays are written); `wait` blocks
    until they are on disk, so that a caller can say "saved" truthfully. Every step carries
    `speech_tokenizer` (the file's bytes, when the stage has one) beside its metadata.

    The data position (item ``data_state``) is the state of the global data iterator, the same
    on every host (`data_pipelines.pipelines`): process 0 writes it once, and any number of
    processes restores it. Checkpoints from before that (item ``data_iter``, one Grain state
    file per process) resume only on the process count that wrote them.
    """

    def __init__(self, directory: str | os.PathLike, keep: int,
                 speech_tokenizer: bytes | None = None):
        self.directory = paths.absolute(directory)
        self.speech_tokenizer = speech_tokenizer
        self._pending: int | None = None  # the last step handed to Orbax to write
        orbax_echoes.quiet_background_failures()
        self._manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=True, create=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def check_space(self, abstract_params, abstract_opt_state) -> None:
        """Before training: the disk must hold one more step than is kept (a step is written
        before the oldest is deleted), or the run would fail at its first save."""
        if paths.is_url(self.directory):
            return
        need = 1.1 * sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(
            (abstract_params, abstract_opt_state))) / jax.process_count()
        epath.Path(self.directory).mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.directory).free
        if free < need:
            raise CheckpointSaveError(
                f"{self.directory} has {free / 1e9:.2f} GB free, and one "
                f"checkpoint step needs about {need / 1e9:.2f} GB per host: free space there "
                "or give another --workdir")

    def _saving(self, action) -> None:
        """Runs a save-related call; what Orbax raises for a failed (background) save becomes
        one `CheckpointSaveError` naming the step it was writing and the cause."""
        try:
            action()
        except CheckpointSaveError:
            raise
        except Exception as e:  # noqa: BLE001  Orbax re-raises the writer thread's error
            step = self._pending if self._pending is not None else "?"
            raise CheckpointSaveError(f"saving step {step} in {self.directory} failed: "
                                      f"{_save_failure(e)}") from e

    def check_for_errors(self) -> None:
        """Raises the error of a background save that has failed since the last call, so a
        full disk is reported at the next logged step, not the next save."""
        self._saving(self._manager.check_for_errors)

    def save(self, step: int, params, opt_state, data_state: dict | None,
             meta: CheckpointMeta) -> None:
        items = described_items(params, meta, self.speech_tokenizer, opt_state)
        if data_state is not None:
            items["data_state"] = ocp.args.JsonSave(data_state)
        self._saving(lambda: self._manager.save(step, args=ocp.args.Composite(**items),
                                                force=True))
        self._pending = step

    def restore(self, step: int, abstract_params, abstract_opt_state, data_iter):
        """Restores the state of `step` into the given targets; `data_iter` is set in place."""
        where = paths.join(self.directory, str(step))
        items = dict(params=ocp.args.StandardRestore(abstract_params),
                     opt_state=ocp.args.StandardRestore(abstract_opt_state),
                     meta=ocp.args.JsonRestore())
        legacy = False
        if data_iter is not None:
            if (epath.Path(where) / "data_state").exists():
                items["data_state"] = ocp.args.JsonRestore()
            else:
                legacy = True
                items["data_iter"] = _legacy_data_restore(data_iter, where)
        restored = restore_items(self._manager, step, where, **items)
        check_complete(restored["params"], abstract_params, where)
        check_complete(restored["opt_state"], abstract_opt_state, where)
        if data_iter is not None and not legacy:
            restore_data_position(data_iter, restored["data_state"], where)
        return restored["params"], restored["opt_state"], CheckpointMeta.from_json(
            restored["meta"])

    def wait(self) -> None:
        self._saving(self._manager.wait_until_finished)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()


def data_workers(state: dict) -> int:
    """How many Grain worker processes (``data.num_workers``) an iterator state is of: a
    worker pool's state holds one state per worker; an in-process iterator's holds none."""
    return len(state.get("iterators_in_use_indices", ()))


def restore_data_position(data_iter, state: dict, where: str) -> None:
    """Puts `data_iter` where the checkpoint's data was. The order of batches depends on
    ``data.num_workers`` (each worker packs its own slice of the examples), so a position
    saved with another worker count cannot be continued: said with the fix, not Grain's
    KeyError."""
    saved, ours = data_workers(state), data_workers(data_iter.get_state())
    if saved != ours:
        raise CheckpointMismatchError(
            f"{where}: its data position was saved with data.num_workers={saved}, and this run "
            f"has {ours}; the data order depends on it. Resume with "
            f"--set=data.num_workers={saved}.")
    try:
        data_iter.set_state(state)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise CheckpointMismatchError(
            f"{where}: its data position does not fit this run's data pipeline ({type(e).__name__}"
            f": {e}); resume with the data.* settings it was saved with.") from e


def _save_failure(error: BaseException) -> str:
    """The cause of a failed save in a few words: the OS error (TensorStore reports it inside
    a message, as ``[os_error_code='28']``) and, for a full disk, the fix."""
    texts = [str(e) for e in _chain(error)]
    codes = [e.errno for e in _chain(error) if isinstance(e, OSError) and e.errno]
    codes += [int(m) for t in texts for m in re.findall(r"os_error_code='(\d+)'", t)]
    if codes:
        reason = os.strerror(codes[0])
        if codes[0] in (errno.ENOSPC, errno.EDQUOT):
            reason += ": free space there or give another --workdir"
        elif codes[0] in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason += ": give a writable --workdir"
        return reason
    return f"{type(error).__name__}: {(texts[0].splitlines() or [''])[0][:300]}"


def _chain(error: BaseException):
    """The error, its causes and contexts, and the errors of an exception group."""
    seen = set()
    stack = [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]


def _legacy_data_restore(data_iter, where: str):
    import grain

    count = jax.process_count()
    if not (epath.Path(where) / "data_iter" / f"process_0-of-{count}.json").exists():
        raise CheckpointMismatchError(
            f"{where} keeps its data position per process (written before the data order "
            f"stopped depending on the host count) and has none for {count} processes: "
            "resume it on the process count that wrote it.")
    return grain.checkpoint.CheckpointRestore(data_iter)
