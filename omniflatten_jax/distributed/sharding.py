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
    """A mesh of all (or the given) devices; a -1 axis takes what the others leave.

    With ``cfg.slices`` > 1 the axis sizes are per slice and the data axis also runs across the
    slices (a hybrid ICI/DCN mesh): TPU devices are grouped by their slice, other devices by
    their process (one GPU node = one granule).
    """
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) % cfg.slices:
        raise ValueError(f"{len(devices)} devices do not split into mesh.slices={cfg.slices}")
    shape = _resolve(cfg, len(devices) // cfg.slices)
    axis_types = (jax.sharding.AxisType.Auto,) * len(shape)
    if cfg.slices == 1:
        return jax.make_mesh(tuple(shape), cfg.axis_names, devices=devices,
                             axis_types=axis_types)
    from jax.experimental import mesh_utils

    # TPU devices know their slice; elsewhere (GPU nodes, CPU tests) a process is a granule.
    by_slice = len({getattr(d, "slice_index", 0) for d in devices}) > 1
    granules = len({d.slice_index if by_slice else d.process_index for d in devices})
    if granules != cfg.slices:
        raise ValueError(f"mesh.slices={cfg.slices}, but the {len(devices)} devices belong to "
                         f"{granules} {'slices' if by_slice else 'processes'}: set "
                         f"--set=mesh.slices={granules}, or 1 for a single slice")
    array = mesh_utils.create_hybrid_device_mesh(
        shape, (cfg.slices, 1, 1), devices, process_is_granule=not by_slice)
    return Mesh(array, cfg.axis_names, axis_types=axis_types)


def _resolve(cfg: MeshConfig, n_devices: int) -> list[int]:
    """The axis sizes over `n_devices` with the -1 axis filled in."""
    shape = list(cfg.shape)
    named = dict(zip(cfg.axis_names, shape))
    if shape.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {named}")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if n_devices % known:
            raise ValueError(f"{n_devices} devices do not divide into mesh {named}")
        shape[shape.index(-1)] = n_devices // known
    if math.prod(shape) != n_devices:
        raise ValueError(f"mesh {named} needs {math.prod(shape)} devices, {n_devices} are "
                         "present" + (" per slice" if cfg.slices > 1 else ""))
    return shape


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


class NoMeshError(RuntimeError):
    """A model function was traced with no mesh and rules to place its activations."""


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules):
    """Sets the mesh (jax.set_mesh) and the rules that `constrain` and the attention kernels
    read while tracing. `TrainProgram` and `PlacedModel` enter it around every call they make;
    a model function traced outside it is an error (`current`), never a silent fallback."""
    token = _ACTIVE.set((mesh, tuple(rules)))
    try:
        with jax.set_mesh(mesh):
            yield mesh
    finally:
        _ACTIVE.reset(token)


def on_one_device():
    """`activate` with the first device alone as the mesh and the default rules: for code
    that calls model functions directly on one device (a smoke check, a micro-benchmark, a
    test's reference)."""
    cfg = MeshConfig()
    return activate(make_mesh(cfg, jax.devices()[:1]), cfg.rules)


def current() -> tuple[Mesh, Rules]:
    """The mesh and rules set by `activate`; outside it, an error naming the fix."""
    active = _ACTIVE.get()
    if active is None:
        raise NoMeshError(
            "a model function was traced outside a mesh: call it through a TrainProgram or a "
            "PlacedModel (they enter their mesh and rules), or inside "
            "sharding.activate(mesh, rules)")
    return active


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Annotates an activation with logical axes on the current mesh (a no-op on one device:
    there is nothing to split)."""
    mesh, rules = current()
    if mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, logical_to_spec(names, x.shape, mesh, rules)))


def batch_sharding(mesh: Mesh, rules: Rules, shape: Sequence[int]) -> NamedSharding:
    """Sharding of a ``[batch, length, ...]`` input: batch over the data-parallel axes."""
    names = ("batch",) + (None,) * (len(shape) - 1)
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))


def data_parallel_axes(mesh: Mesh, rules: Rules) -> tuple[str, ...]:
    """The mesh axes a batch is split over (those the ``batch`` rule names, larger than 1)."""
    target = dict(rules).get("batch")
    axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    return tuple(a for a in axes if mesh.shape[a] > 1)


def check_batch_divides(mesh: Mesh, rules: Rules, batch_size: int, setting: str) -> None:
    """A training batch must split evenly over the data-parallel devices: one that does not
    would be replicated, so that hosts compute different things for the same step."""
    axes = data_parallel_axes(mesh, rules)
    ways = math.prod(mesh.shape[a] for a in axes)
    if batch_size % ways:
        split = " x ".join(f"{a}={mesh.shape[a]}" for a in axes)
        fits = batch_size + ways - batch_size % ways
        raise ValueError(f"{setting}={batch_size} does not divide over the {ways} data-parallel "
                         f"devices (mesh {split}): use a multiple of {ways}, e.g. "
                         f"--set={setting}={fits}, or change the mesh (--set=mesh.tensor=...)")
