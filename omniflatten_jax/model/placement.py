"""Parameters placed on devices once, and the explicit shardings of every call around them.

Evaluation, generation and duplex decoding make many small jitted calls on the same weights.
`PlacedModel` puts the parameters on a mesh once, either ``sharded`` by the logical-axis rules
(as training holds them) or ``replicated`` on every device (no gathers per token: faster
decoding when the model fits a chip), and jits each call with explicit input and output
shardings. No call uploads a weight again or moves a result through the host implicitly:
host values enter through `put` and leave through `get`, the only transfers, explicit ones
(allowed under ``jax.transfer_guard("disallow")``). Both work when the mesh spans hosts,
provided every host passes the same values (every host runs the same evaluation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from omniflatten_jax.config import PARAM_PLACEMENTS, MeshConfig, ParamPlacement
from omniflatten_jax.distributed import sharding
from omniflatten_jax.model import DecodeCache, Params, Transformer
from omniflatten_jax.model.attention import LayerCache

# Logical axes of a decode cache's fields (`model.DecodeCache`).
CACHE_KV_AXES = ("batch", None, "act_kv_heads", None)


def placement_rules(rules: sharding.Rules, placement: ParamPlacement) -> tuple:
    """The rules as given (sharded), or with every axis but the batch replicated."""
    if placement not in PARAM_PLACEMENTS:
        raise ValueError(f"parameter placement must be one of {PARAM_PLACEMENTS}, "
                         f"not {placement!r}")
    if placement == "sharded":
        return tuple(rules)
    return tuple((name, target if name == "batch" else None) for name, target in rules)


class PlacedModel:
    """A `Transformer` with its parameters on `mesh`, and the shardings its calls state."""

    def __init__(self, model: Transformer, params: Params, mesh: Mesh, rules: sharding.Rules,
                 placement: ParamPlacement = "sharded"):
        self.model, self.mesh, self.placement = model, mesh, placement
        self.rules = placement_rules(rules, placement)
        self.param_shardings = model.param_shardings(mesh, self.rules)
        self.params = _place(params, self.param_shardings)
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self._cache_shardings: dict[tuple[int, int], DecodeCache] = {}

    @classmethod
    def create(cls, model: Transformer, params: Params, mesh_cfg: MeshConfig = MeshConfig(),
               placement: ParamPlacement = "sharded",
               devices: Sequence[jax.Device] | None = None) -> "PlacedModel":
        """Placed on a mesh of `mesh_cfg`'s shape over all (or the given) devices."""
        return cls(model, params, sharding.make_mesh(mesh_cfg, devices), mesh_cfg.rules,
                   placement)

    # --- shardings -------------------------------------------------------------------------
    def sharding_of(self, names: Sequence[str | None], shape: Sequence[int]) -> NamedSharding:
        return NamedSharding(self.mesh, sharding.logical_to_spec(names, shape, self.mesh,
                                                                 self.rules))

    def batch_sharding(self, shape: tuple[int, ...]) -> NamedSharding:
        """``[batch, ...]`` split over the data axes where the batch divides, else replicated."""
        return sharding.batch_sharding(self.mesh, self.rules, shape)

    def cache_shardings(self, batch: int, slots: int) -> DecodeCache:
        """Built once per shape (decoding asks for them every chunk)."""
        if (batch, slots) not in self._cache_shardings:
            cfg = self.model.cfg
            kv = self.sharding_of(CACHE_KV_AXES, (batch, slots, cfg.num_kv_heads, cfg.head_dim))
            self._cache_shardings[batch, slots] = DecodeCache(
                tuple(LayerCache(kv, kv) for _ in range(cfg.num_layers)),
                self.batch_sharding((batch,)), self.batch_sharding((batch, slots)),
                self.batch_sharding((batch,)))
        return self._cache_shardings[batch, slots]

    def activate(self):
        """The mesh and rules the model reads while tracing; `jit`'s calls enter it."""
        return sharding.activate(self.mesh, self.rules)

    # --- the only transfers ----------------------------------------------------------------
    def put(self, x, batch: bool = False) -> jax.Array:
        """A host array onto the mesh: split over the batch axis (`batch`) or replicated. On
        several hosts every host passes the same value, and JAX checks that they agree."""
        x = np.asarray(x)
        return jax.device_put(x, self.batch_sharding(tuple(x.shape)) if batch
                              else self.replicated)

    def key(self, seed: int) -> jax.Array:
        """A PRNG key made on every device of the mesh (computed there: nothing moves)."""
        return self.jit("key", lambda: jax.random.key(seed), seed, in_shardings=(),
                        out_shardings=self.replicated)()

    def keys(self, seeds: Sequence[int]) -> jax.Array:
        """One PRNG key per batch row (``[B]``, replicated), made on the devices from `seeds`:
        a row's draws depend on its own seed only."""
        fn = self.jit("keys", jax.vmap(jax.random.key), len(seeds),
                      in_shardings=(self.replicated,), out_shardings=self.replicated)
        return fn(self.put(np.asarray(seeds, np.uint32)))

    @staticmethod
    def get(x: jax.Array) -> np.ndarray:
        """A replicated result to the host (this host's copy: no cross-host gather)."""
        if not x.sharding.is_fully_replicated:
            raise ValueError(f"get() reads replicated results; this one is {x.sharding}")
        return np.asarray(jax.device_get(x.addressable_data(0)))

    # --- jitted calls ----------------------------------------------------------------------
    def jit(self, name: str, fn: Callable, *static: Any, in_shardings, out_shardings,
            donate_argnums: tuple[int, ...] = ()) -> Callable:
        """``fn`` jitted with these shardings and traced under this mesh and rules. Built once
        per (model, mesh, rules, name, static) in the process: `name` and `static` must
        determine `fn` and the shardings (the shapes and settings they were derived from)."""
        key = (self.model, self.mesh, self.rules, name, static)
        if key not in _JITTED:
            _JITTED[key] = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                                   donate_argnums=donate_argnums)
        jitted = _JITTED[key]

        def call(*args):
            with self.activate():
                return jitted(*args)
        return call

    def init_cache(self, batch: int, slots: int) -> DecodeCache:
        """An empty decode cache, created on the devices in its shardings."""
        fn = self.jit("init_cache", functools.partial(self.model.init_cache, batch, slots),
                      batch, slots, in_shardings=(),
                      out_shardings=self.cache_shardings(batch, slots))
        return fn()


_JITTED: dict[tuple, Callable] = {}


def _place(params: Params, shardings: Params) -> Params:
    """Host arrays are uploaded, device arrays resharded (a no-op where they already match)."""
    def place(x, target):
        if isinstance(x, jax.Array):
            if x.sharding == target:
                return x
            if x.is_fully_addressable and not target.is_fully_addressable:
                x = np.asarray(jax.device_get(x))  # this host's value: every host passes it
        return jax.device_put(x, target)
    return jax.tree.map(place, params, shardings)
