"""The model as pure functions of a parameter tree: what every hot path jits.

`Transformer` splits the NNX module once into a static graph definition and a plain nested dict
of arrays (the parameters). Its methods are pure; callers wrap them in ``jax.jit`` with explicit
shardings from `param_shardings`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from omniflatten_jax.config import ModelConfig
from omniflatten_jax.distributed import sharding
from omniflatten_jax.model.attention import CacheWrite, LayerCache, write_rows
from omniflatten_jax.model.decoder import Decoder

Params = dict


@dataclasses.dataclass(frozen=True)
class DecodeCache:
    """Preallocated keys/values of every layer, and which slots hold real tokens.

    Each row has its own cursor, so the rows can hold independent sequences that start,
    advance and restart on their own (`extend`'s ``rows``, `reset_rows`): the live duplex
    session keeps one conversation per row. A row's padding (for example the left padding of
    prompts of different lengths) occupies slots that `valid` marks false, and the row's own
    positions count only its real tokens.
    """

    layers: tuple[LayerCache, ...]
    length: jax.Array  # int32 [B]: slots each row has written so far
    valid: jax.Array  # bool [B, slots]: slots that hold real tokens
    next_position: jax.Array  # int32 [B]: RoPE position of each row's next real token


jax.tree_util.register_dataclass(
    DecodeCache, data_fields=["layers", "length", "valid", "next_position"], meta_fields=[])


class Transformer:
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        self.cfg = cfg
        self.vocab_size = vocab_size
        abstract = nnx.eval_shape(lambda: Decoder(cfg, vocab_size, nnx.Rngs(0)))
        self.graphdef, state = nnx.split(abstract, nnx.Param)
        self.abstract_params: Params = nnx.to_pure_dict(state)
        self.param_axes: Params = nnx.to_pure_dict(
            state, extract_fn=lambda v: v.get_metadata()["logical_axes"])

    @property
    def num_params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(self.abstract_params))

    def param_shardings(self, mesh: Mesh, rules: sharding.Rules):
        return sharding.tree_shardings(self.param_axes, self.abstract_params, mesh, rules)

    def init(self, rng: jax.Array, mesh: Mesh | None = None, rules: sharding.Rules = ()) -> Params:
        """Random parameters (HF's normal(0.02) init), created directly in their shardings."""
        def make(key):
            return nnx.to_pure_dict(
                nnx.state(Decoder(self.cfg, self.vocab_size, nnx.Rngs(key)), nnx.Param))

        if mesh is None:
            return jax.jit(make)(rng)
        with sharding.activate(mesh, rules):
            return jax.jit(make, out_shardings=self.param_shardings(mesh, rules))(rng)

    def _module(self, params: Params) -> Decoder:
        return nnx.merge(self.graphdef, params)

    def logits(self, params: Params, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> jax.Array:
        """Full forward pass: ``tokens [B, T]`` -> fp32 logits ``[B, T, vocab]``.

        For packed rows pass ``segment_ids`` (0 = padding) and per-segment ``positions``.
        """
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        logits, _ = self._module(params)(tokens, positions, segment_ids)
        return logits

    def hidden(self, params: Params, tokens: jax.Array, positions: jax.Array,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """The final normalised hidden states ``[B, T, embed]`` and the output projection
        ``[embed, vocab]``: what a loss that never builds the full logits needs."""
        module = self._module(params)
        x, _ = module(tokens, positions, segment_ids, hidden_only=True)
        return x, module.head_weight()

    def init_cache(self, batch: int, max_len: int, dtype=None) -> DecodeCache:
        dtype = jnp.dtype(dtype or self.cfg.dtype)
        shape = (batch, max_len, self.cfg.num_kv_heads, self.cfg.head_dim)
        layers = tuple(LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
                       for _ in range(self.cfg.num_layers))
        return DecodeCache(layers, jnp.zeros((batch,), jnp.int32),
                           jnp.zeros((batch, max_len), bool), jnp.zeros((batch,), jnp.int32))


    def extend(self, params: Params, cache: DecodeCache, tokens: jax.Array,
               valid: jax.Array | None = None, rows: jax.Array | None = None
               ) -> tuple[jax.Array, DecodeCache]:
        """Appends ``tokens [B, T]`` (a prompt, a chunk, or one token) to the cache.

        ``valid [B, T]`` marks padding (false) that no later token may attend to. ``rows [B]``
        (default: all) says which rows take the tokens; the others are left as they were
        (their logits are computed and meaningless). Returns the logits of the new tokens,
        equal to the full forward pass over each row's real tokens. Writing past the cache's
        end is the caller's bug: size the cache for the whole sequence, or slide.
        """
        b, t = tokens.shape
        valid = jnp.ones((b, t), bool) if valid is None else valid.astype(bool)
        taken = jnp.ones((b,), bool) if rows is None else rows.astype(bool)
        valid = valid & taken[:, None]
        positions = cache.next_position[:, None] + jnp.cumsum(valid, axis=1) - valid
        slots = cache.valid.shape[1]
        where = CacheWrite(cache.length, taken)
        slot_valid = write_rows(cache.valid, valid, where)
        query_slot = cache.length[:, None] + jnp.arange(t)  # [B, T]
        causal = jnp.arange(slots) <= query_slot[..., None]  # [B, T, S]
        own = jnp.arange(slots) == query_slot[..., None]  # keeps padding rows finite
        mask = (causal & slot_valid[:, None, :]) | own
        logits, layers = self._module(params)(tokens, positions, None, cache.layers, where,
                                              mask)
        return logits, DecodeCache(layers, cache.length + t * taken.astype(jnp.int32),
                                   slot_valid,
                                   cache.next_position + jnp.sum(valid, axis=1, dtype=jnp.int32))


def reset_rows(cache: DecodeCache, rows: jax.Array) -> DecodeCache:
    """The cache with ``rows [B]`` emptied (nothing valid, cursor and positions at 0), the
    others untouched: a row starts a new sequence while the rest go on. The keys and values
    stay (no slot is valid, so none is read) and are overwritten as the row advances."""
    keep = ~rows.astype(bool)
    return DecodeCache(cache.layers, cache.length * keep, cache.valid & keep[:, None],
                       cache.next_position * keep)


@functools.cache
def transformer(cfg: ModelConfig, vocab_size: int) -> Transformer:
    """One `Transformer` per (config, vocab size): its abstract trace is done once."""
    return Transformer(cfg, vocab_size)
