"""Orbax checkpoints: model parameters plus the metadata that says how to read them.

A checkpoint folder is an Orbax `CheckpointManager` directory of numbered steps. Each step holds
named items:

* ``params``: the model parameter tree (always);
* ``meta``: JSON with the model config, the token layout and the lineage (always);
* ``opt_state`` and ``data_iter``: written by training runs, so a run resumes exactly.

Every command that takes a checkpoint accepts the folder (its latest step is used) or one step
folder inside it (`resolve`). Restoring checks every parameter against the model config, so a
partial or mismatched checkpoint is an error, not silently half-initialised weights.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from omniflatten_jax.config import ModelConfig, from_dict, to_dict
from omniflatten_jax.vocab import TokenLayout


@dataclasses.dataclass(frozen=True)
class CheckpointMeta:
    model: ModelConfig
    layout: TokenLayout
    # Where these weights came from: a list of {"kind", "path", "step", ...} records, oldest first.
    lineage: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"model": to_dict(self.model), "layout": self.layout.to_dict(),
                "lineage": list(self.lineage)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "CheckpointMeta":
        return cls(from_dict(ModelConfig, d["model"]), TokenLayout.from_dict(d["layout"]),
                   tuple(d.get("lineage", ())))


def resolve(path: str | os.PathLike) -> tuple[str, int]:
    """A checkpoints folder or a step folder inside it -> (manager directory, step)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if os.path.isdir(os.path.join(path, "params")):
        step = os.path.basename(path)
        if not step.isdigit():
            raise ValueError(f"{path} looks like a step folder but its name is not a step number")
        return os.path.dirname(path), int(step)
    with ocp.CheckpointManager(path) as manager:
        step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"{path} holds no checkpoint steps (expected numbered step "
                                "folders, each with params/ and meta/)")
    return path, step


def save_params(directory: str | os.PathLike, step: int, params, meta: CheckpointMeta) -> str:
    """Writes a params-only step (used by imports); training writes more items, same format."""
    directory = os.path.abspath(os.fspath(directory))
    with ocp.CheckpointManager(directory) as manager:
        manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                   meta=ocp.args.JsonSave(meta.to_json())))
        manager.wait_until_finished()
    return os.path.join(directory, str(step))


def load_meta(path: str | os.PathLike) -> CheckpointMeta:
    directory, step = resolve(path)
    with ocp.CheckpointManager(directory) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return CheckpointMeta.from_json(restored["meta"])


def check_complete(restored, abstract, where: str) -> None:
    """Every expected parameter is present, materialised, and of the expected shape."""
    want = dict(jax.tree_util.tree_leaves_with_path(abstract))
    got = dict(jax.tree_util.tree_leaves_with_path(restored))
    missing = [jax.tree_util.keystr(k) for k in want if k not in got]
    extra = [jax.tree_util.keystr(k) for k in got if k not in want]
    bad = [f"{jax.tree_util.keystr(k)}: {getattr(got[k], 'shape', None)} vs {want[k].shape}"
           for k in want if k in got and (isinstance(got[k], jax.ShapeDtypeStruct)
                                          or np.shape(got[k]) != want[k].shape)]
    if missing or extra or bad:
        raise ValueError(f"checkpoint {where} does not match the model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}, wrong or unrestored {bad[:5]}")


def load_params(path: str | os.PathLike, shardings=None, layout: TokenLayout | None = None):
    """Restores ``(params, meta, step_dir)``; params land in `shardings` (default: one device).

    With `layout`, the checkpoint's token layout must equal it (ids must mean the same tokens).
    """
    from omniflatten_jax.model import transformer

    directory, step = resolve(path)
    meta = load_meta(os.path.join(directory, str(step)))
    if layout is not None:
        layout.check_matches(meta.layout, ours="this run", theirs=f"checkpoint {path}")
    model = transformer(meta.model, meta.layout.vocab_size)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, model.abstract_params)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            model.abstract_params, shardings)
    where = os.path.join(directory, str(step))
    with ocp.CheckpointManager(directory) as manager:
        restored = manager.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))
    check_complete(restored["params"], abstract, where)
    return restored["params"], meta, where


def abstract_like(tree, shardings):
    """ShapeDtypeStructs carrying the shardings that restored arrays should land in."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


class TrainCheckpointer:
    """Saves and restores a run's whole state: params, optimiser state, data iterator, meta.

    Saves are asynchronous (training continues while the arrays are written); `wait` blocks
    until they are on disk, so that a caller can say "saved" truthfully.
    """

    def __init__(self, directory: str | os.PathLike, keep: int):
        self.directory = os.path.abspath(os.fspath(directory))
        self._manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=True, create=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, params, opt_state, data_iter, meta: CheckpointMeta) -> None:
        import grain

        items = dict(params=ocp.args.StandardSave(params),
                     opt_state=ocp.args.StandardSave(opt_state),
                     meta=ocp.args.JsonSave(meta.to_json()))
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, abstract_params, abstract_opt_state, data_iter):
        """Restores the state of `step` into the given targets; `data_iter` is set in place."""
        import grain

        items = dict(params=ocp.args.StandardRestore(abstract_params),
                     opt_state=ocp.args.StandardRestore(abstract_opt_state),
                     meta=ocp.args.JsonRestore())
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        where = os.path.join(self.directory, str(step))
        check_complete(restored["params"], abstract_params, where)
        check_complete(restored["opt_state"], abstract_opt_state, where)
        return restored["params"], restored["opt_state"], CheckpointMeta.from_json(
            restored["meta"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
