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
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from etils import epath

from omniflatten_jax.distributed import paths


def check_destination(out: str, overwrite: bool) -> epath.Path:
    """`out` may be written: it does not exist, is an empty folder, or `overwrite` is set (and
    it is a folder); its nearest existing parent is a folder."""
    path = epath.Path(paths.absolute(out))
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"--out {path} is a file, not a folder: choose another --out")
        if not overwrite and any(True for _ in path.iterdir()):
            raise FileExistsError(f"--out {path} is not empty: choose a new folder, or pass "
                                  "--overwrite to replace it and everything in it")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"--out {path} cannot be created: {parent} is a file; "
                                 "choose another --out")
    return path


@contextlib.contextmanager
def staged_folder(out: str, overwrite: bool) -> Iterator[str]:
    """Yields a temporary folder beside `out` to write into; on success renames it to `out`
    (replacing it when `overwrite`), on failure deletes it."""
    final = check_destination(out, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        yield str(staging)
        _move_into_place(staging, check_destination(out, overwrite))  # again: not raced
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
