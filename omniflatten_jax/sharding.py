"""Device mesh, logical-axis rules, and the shardings of parameters and activations.

Parameters and large activations carry logical axis names (``embed``, ``heads``, ``batch``...);
`MeshConfig.rules` maps them to the mesh axes ``("data", "fsdp", "tensor")``. A logical axis
whose size does not divide its mesh axes is replicated instead (for example Qwen2-0.5B's 2 KV
heads on a tensor axis of 4), so every preset runs on every mesh shape.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from omniflatten_jax.config import MeshConfig

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "omniflatten_active_mesh", default=None)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh of all (or the given) devices; a -1 axis takes what the others leave."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(cfg.shape)
    if shape.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(cfg.axis_names, shape))}")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into mesh "
                             f"{dict(zip(cfg.axis_names, shape))}")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh {dict(zip(cfg.axis_names, shape))} needs {math.prod(shape)} "
                         f"devices, {len(devices)} are present")
    return jax.make_mesh(tuple(shape), cfg.axis_names, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Rules) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec, replicating axes that would not divide."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape):
        target = table.get(name) if name is not None else None
        axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
        if axes and size % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            spec.append(axes[0] if len(axes) == 1 else axes)
        else:
            spec.append(None)
    return PartitionSpec(*spec)


def tree_shardings(axes_tree, abstract_tree, mesh: Mesh, rules: Rules):
    """NamedShardings for a tree of arrays given a matching tree of logical-axis tuples."""
    return jax.tree.map(
        lambda names, x: NamedSharding(mesh, logical_to_spec(names, x.shape, mesh, rules)),
        axes_tree, abstract_tree, is_leaf=lambda n: isinstance(n, tuple))


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules):
    """Sets the mesh (jax.set_mesh) and the rules that `constrain` uses while tracing."""
    token = _ACTIVE.set((mesh, tuple(rules)))
    try:
        with jax.set_mesh(mesh):
            yield mesh
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Annotates an activation with logical axes; a no-op when no mesh is active."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, logical_to_spec(names, x.shape, mesh, rules)))


def batch_sharding(mesh: Mesh, rules: Rules, shape: Sequence[int]) -> NamedSharding:
    """Sharding of a ``[batch, length, ...]`` input: batch over the data-parallel axes."""
    names = ("batch",) + (None,) * (len(shape) - 1)
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))
