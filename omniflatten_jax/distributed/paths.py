"""Paths of workdirs and checkpoints: local folders or any URL `etils.epath` handles (gs://).

A pod's workdir is usually a bucket, so nothing may pass it through `os.path.abspath` (which
turns ``gs://b/x`` into ``/cwd/gs:/b/x``); local paths are made absolute (Orbax needs that),
URLs are kept as they are. Read and write through `epath.Path(...)`, not `open`.
"""

from __future__ import annotations

import os

from etils import epath


def is_url(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute; a URL unchanged."""
    path = os.fspath(path)
    return path if is_url(path) else os.path.abspath(path)


def join(*parts: str | os.PathLike) -> str:
    """`os.path.join` that keeps a URL's scheme (``gs://b`` + ``x`` -> ``gs://b/x``)."""
    return str(epath.Path(absolute(parts[0])).joinpath(*map(os.fspath, parts[1:])))


def copy_tree(local_folder: str, target: str) -> None:
    """Replaces `target` (a local folder or a URL) with a copy of `local_folder`, file by
    file through `epath`, so a bucket workdir keeps what a local one would."""
    destination = epath.Path(target)
    if destination.exists():
        destination.rmtree()
    for folder, _, files in os.walk(local_folder):
        here = destination / os.path.relpath(folder, local_folder)
        here.mkdir(parents=True, exist_ok=True)
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                (here / name).write_bytes(f.read())
