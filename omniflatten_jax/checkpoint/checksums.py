"""Checksums of array trees, computed on the devices that hold the arrays.

Orbax does not verify what it reads back: its Zarr shard index carries a CRC32C, the chunk
bytes do not, so random bytes or a flipped bit in a parameter file load as changed values or
NaN. Every checkpoint step therefore stores, per array, two position-weighted sums of its
bits modulo 2**32 (`tree_checksums`), and restoring recomputes and compares them.

The sums are over the logical array, so they do not depend on the sharding, the mesh or the
number of hosts that wrote or read it (integer addition modulo 2**32 is exact in any order).
A single flipped bit always changes the first sum (its weight is odd); other changes are
missed with probability about 2**-64.

The step's ``meta`` (the model's settings, the stage, the decoding policy) is covered too, by a
SHA-256 of its JSON (`document_checksum`): settings edited by hand would otherwise be read as
the truth about weights trained under others.
"""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _bits(x: jax.Array) -> jax.Array:
    """The array's bit patterns as uint32 (narrower types are widened, 64-bit ones folded)."""
    width = x.dtype.itemsize
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if width == 8:
        pair = lax.bitcast_convert_type(x, jnp.uint32)  # [..., 2]
        return pair[..., 0] ^ (pair[..., 1] * jnp.uint32(0x85EBCA6B))
    as_uint = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[width]
    return lax.bitcast_convert_type(x, as_uint).astype(jnp.uint32)


def _linear_index(shape) -> jax.Array:
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(len(shape))):
        index = index + lax.broadcasted_iota(jnp.uint32, shape, dim) * jnp.uint32(stride % 2**32)
        stride *= shape[dim]
    return index


@jax.jit
def _sums(tree):
    def leaf(x):
        bits = _bits(jnp.asarray(x))
        index = _linear_index(bits.shape)
        first = jnp.sum(bits * (index * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)
        rotated = (bits << 7) | (bits >> 25)
        second = jnp.sum((rotated ^ index) * (index * jnp.uint32(0x9E3779B1) | jnp.uint32(1)),
                         dtype=jnp.uint32)
        return jnp.stack([first, second])
    return jax.tree.map(leaf, tree)


def tree_checksums(tree) -> dict[str, str]:
    """``{path: "xxxxxxxx-xxxxxxxx"}`` for every array leaf of `tree`."""
    sums = jax.device_get(_sums(tree))
    return {jax.tree_util.keystr(path): "%08x-%08x" % tuple(np.asarray(s, np.uint32))
            for path, s in jax.tree_util.tree_leaves_with_path(sums)}


def mismatches(tree, expected: dict[str, str]) -> list[str]:
    """The paths whose checksum differs from `expected` (or that it does not list)."""
    got = tree_checksums(tree)
    return [k for k in sorted(set(got) | set(expected)) if got.get(k) != expected.get(k)]


def document_checksum(document: dict) -> str:
    """The SHA-256 of a JSON document (a step's ``meta``), independent of key order."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
