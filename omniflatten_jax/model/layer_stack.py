"""The decoder layers of a training or scoring pass: one `lax.scan` with a named remat policy.

A Python loop over 24-28 layers traces and compiles each layer anew, so compile time grows
with depth; a scan compiles one layer. The parameter tree keeps one entry per layer (what
checkpoints and the Hugging Face weight map hold): the scan stacks the layers' weights, cast
to the compute dtype, inside the jitted step. That stack is a copy of the layer weights in
16 bits per step (its sharding left to the compiler, which follows the weights'), the price of
leaving every checkpoint as it was.

The remat policy names what a layer keeps for the backward pass (`ModelConfig.remat`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

_POLICIES = {
    "minimal": jax.checkpoint_policies.dots_saveable,
    "save_matmuls": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def remat_policy(name: str):
    """The `jax.checkpoint` policy of a `ModelConfig.remat` name; None for "none"."""
    return _POLICIES.get(name)


def run_layers(layers: Sequence[nnx.Module], x: jax.Array, positions: jax.Array,
               segment_ids: jax.Array | None, *, remat: str, scan: bool, dtype) -> jax.Array:
    """``x [B, T, E]`` through every decoder layer (no KV cache)."""
    policy = remat_policy(remat)

    def apply(layer, x):
        return layer(x, positions, segment_ids)[0]

    if not scan:
        for layer in layers:
            if policy is not None:
                x = nnx.remat(apply, policy=policy)(layer, x)
            else:
                x = apply(layer, x)
        return x

    graphdef, _ = nnx.split(layers[0])
    leaves, treedef = zip(*(jax.tree.flatten_with_path(nnx.state(layer)) for layer in layers))
    paths = [path for path, _ in leaves[0]]
    # Weights go to the compute dtype before stacking (the layer casts them anyway); norm
    # scales stay as they are, since RMSNorm applies them in fp32.
    stacked = [jnp.stack([_compute_cast(path, layer[i][1], dtype) for layer in leaves])
               for i, path in enumerate(paths)]

    def body(x, layer_leaves):
        layer = nnx.merge(graphdef, jax.tree.unflatten(treedef[0], layer_leaves))
        return apply(layer, x), None

    if policy is not None:
        body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    x, _ = jax.lax.scan(body, x, stacked)
    return x


def _compute_cast(path, leaf: jax.Array, dtype) -> jax.Array:
    names = [getattr(key, "key", getattr(key, "name", None)) for key in path]
    return leaf if "scale" in names else leaf.astype(dtype)
