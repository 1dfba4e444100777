"""Grouped-query self-attention with RoPE over packed rows (`packed_attention`) or a
preallocated KV cache."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from omniflatten_jax.config import ModelConfig
from omniflatten_jax.distributed.sharding import constrain
from omniflatten_jax.model.families import DecoderOptions
from omniflatten_jax.model.layers import Einsum, RMSNorm, apply_rope
from omniflatten_jax.model.packed_attention import packed_attention


class CacheWrite(NamedTuple):
    """Where a call's T new tokens go in each row's cache: from slot ``start [B]``, for the
    ``rows [B]`` that take them (a row that does not keeps its slots as they were)."""

    start: jax.Array
    rows: jax.Array


def write_rows(buffer: jax.Array, new: jax.Array, where: CacheWrite) -> jax.Array:
    """``buffer [B, slots, ...]`` with ``new [B, T, ...]`` written where `where` says."""
    def one(row, x, start, take):
        old = jax.lax.dynamic_slice_in_dim(row, start, x.shape[0], 0)
        return jax.lax.dynamic_update_slice_in_dim(
            row, jnp.where(take, x.astype(row.dtype), old), start, 0)
    return jax.vmap(one)(buffer, new, where.start, where.rows)


class LayerCache(NamedTuple):
    """One layer's keys and values for `max_len` slots: ``[B, max_len, kv_heads, head_dim]``."""

    k: jax.Array
    v: jax.Array


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, options: DecoderOptions, rngs: nnx.Rngs):
        e, h, kv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dense = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        bias = 2 if options.qkv_bias else 0
        self.q = Einsum("bte,ehd->bthd", (e, h, d), ("embed", "heads", "head_dim"),
                        bias_dims=bias, **dense)
        self.k = Einsum("bte,ehd->bthd", (e, kv, d), ("embed", "kv_heads", "head_dim"),
                        bias_dims=bias, **dense)
        self.v = Einsum("bte,ehd->bthd", (e, kv, d), ("embed", "kv_heads", "head_dim"),
                        bias_dims=bias, **dense)
        self.o = Einsum("bthd,hde->bte", (h, d, e), ("heads", "head_dim", "embed"), **dense)
        if options.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, cfg.param_dtype, "head_dim")
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, cfg.param_dtype, "head_dim")
        else:
            self.q_norm = self.k_norm = None
        self.rope_theta = cfg.rope_theta
        self.impl = cfg.attention_impl  # resolved when traced: `packed_attention.resolve`

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None,
                 cache: LayerCache | None = None, cache_write: CacheWrite | None = None,
                 cache_mask: jax.Array | None = None) -> tuple[jax.Array, LayerCache | None]:
        """Self-attention over ``x [B, T, E]``.

        Without a cache: causal within each packed segment (``segment_ids`` 0 marks padding).
        With a cache: each row's T new tokens are written where ``cache_write`` says and attend
        to the slots that ``cache_mask [B, T, slots]`` allows (prefill, a chunk, or a single
        token).
        """
        q, k = self.q(x), self.k(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q, positions, self.rope_theta)
        k = apply_rope(k, positions, self.rope_theta)
        v = self.v(x)
        q = constrain(q, ("batch", "length", "act_heads", None))
        k = constrain(k, ("batch", "length", "act_kv_heads", None))
        v = constrain(v, ("batch", "length", "act_kv_heads", None))
        if cache is None:
            out = packed_attention(q, k, v, segment_ids, self.impl)
        else:
            cache = LayerCache(write_rows(cache.k, k, cache_write),
                               write_rows(cache.v, v, cache_write))
            out = jax.nn.dot_product_attention(
                q, cache.k.astype(q.dtype), cache.v.astype(q.dtype),
                mask=cache_mask[:, None], implementation="xla")
        out = constrain(out, ("batch", "length", "act_heads", None))
        return self.o(out), cache
