"""A checkpoint's parameters restored straight onto a mesh, ready for evaluation and decoding."""

from __future__ import annotations

from omniflatten_jax.checkpoint.store import load_meta, load_params
from omniflatten_jax.config import MeshConfig, ParamPlacement
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.distributed import sharding
from omniflatten_jax.model import transformer
from omniflatten_jax.model.placement import PlacedModel, placement_rules


def restore_placed(path: str, mesh_cfg: MeshConfig = MeshConfig(),
                   placement: ParamPlacement = "sharded", layout: TokenLayout | None = None
                   ) -> PlacedModel:
    """The checkpoint at `path` (a folder or a step), its parameters restored into their
    placement on a mesh of `mesh_cfg`'s shape, never whole on one device first (with
    `layout`, the checkpoint's token layout must equal it)."""
    meta = load_meta(path)
    model = transformer(meta.model, meta.layout.vocab_size)
    mesh = sharding.make_mesh(mesh_cfg)
    target = model.param_shardings(mesh, placement_rules(mesh_cfg.rules, placement))
    params, _, _ = load_params(path, target, layout)
    return PlacedModel(model, params, mesh, mesh_cfg.rules, placement)
