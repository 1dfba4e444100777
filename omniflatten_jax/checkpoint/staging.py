"""The conversion commands' output folders: checked first, written beside, renamed into place.

An export or import that stops half-way (killed, disk full, bad weights found late) must not
leave a folder that looks finished, and one into a folder that already holds a model must not
report success while the old files (or a mix of old and new) stay there. So a command:

1. checks the destination before any slow work (`check_destination`): a non-empty folder is
   an error unless ``--overwrite`` says to replace it;
2. writes everything into a fresh temporary folder beside the destination (same parent, so
   the same file system) and, only when all is written, renames it into place
   (`staged_folder`). A rename within a file system is atomic: readers see the old folder or
   the new one, never a half. With ``--overwrite`` the old folder is moved aside first and
   deleted after the new one is in place; a crash between the two renames leaves it as
   ``.NAME.old-*`` beside the destination, nothing lost.

``--overwrite`` never deletes what it must not: a destination that holds, contains or lies
inside the input being read (the checkpoint or Hugging Face folder), or that holds a training
run's checkpoints (a step with an optimiser state, anywhere down to WORKDIR/STAGE/checkpoints),
is refused whatever the flag says.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

from etils import epath

from omniflatten_jax.checkpoint.store import training_step_within
from omniflatten_jax.distributed import paths


def check_destination(out: str, overwrite: bool, source: str | None = None) -> epath.Path:
    """`out` may be written: it does not exist, is an empty folder, or `overwrite` is set (and
    it is a folder that holds neither the input `source` nor a training run); its nearest
    existing parent is a folder."""
    path = epath.Path(paths.absolute(out))
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"--out {path} is a file, not a folder: choose another --out")
        if any(True for _ in path.iterdir()):
            if not overwrite:
                raise FileExistsError(f"--out {path} is not empty: choose a new folder, or "
                                      "pass --overwrite to replace it and everything in it")
            _refuse_to_delete(path, source)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"--out {path} cannot be created: {parent} is a file; "
                                 "choose another --out")
    return path


def _refuse_to_delete(path: epath.Path, source: str | None) -> None:
    """What ``--overwrite`` must never delete (module doc)."""
    if source is not None:
        read = _real(paths.absolute(source))
        if _within(read, _real(str(path))) or _within(_real(str(path)), read):
            raise FileExistsError(
                f"--out {path} holds the input being read ({source}): --overwrite would delete "
                "it; choose another --out")
    step = training_step_within(path)
    if step is not None:
        raise FileExistsError(
            f"--out {path} holds a training run's checkpoints ({step} has an optimiser state): "
            "--overwrite never deletes them; choose another --out")


def _real(path: str) -> str:
    return path if paths.is_url(path) else os.path.realpath(path)


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


@contextlib.contextmanager
def staged_folder(out: str, overwrite: bool, source: str | None = None) -> Iterator[str]:
    """Yields a temporary folder beside `out` to write into; on success renames it to `out`
    (replacing it when `overwrite`, within `check_destination`'s limits), on failure deletes
    it."""
    final = check_destination(out, overwrite, source)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        yield str(staging)
        _move_into_place(staging, check_destination(out, overwrite, source))  # again
    except BaseException:
        staging.rmtree(missing_ok=True)
        raise


def _move_into_place(staging: epath.Path, final: epath.Path) -> None:
    if not final.exists():
        staging.rename(final)
        return
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
    final.rename(old)
    staging.rename(final)
    old.rmtree()
