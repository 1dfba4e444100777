"""The decoder of Qwen2's lineage as Hugging Face defines it, in Flax NNX.

RMSNorm, RoPE, grouped-query attention, a SwiGLU MLP, tied or untied embeddings; where a family
departs from that (a q/k/v bias, a q/k norm) its `families.DecoderOptions` say so. Parameter
names mirror Hugging Face's (each family's tensor table, `model.families`). Use it through
`model.Transformer`, which splits it once into pure functions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from omniflatten_jax.config import ModelConfig
from omniflatten_jax.distributed.sharding import constrain
from omniflatten_jax.model import families
from omniflatten_jax.model.attention import Attention, CacheWrite, LayerCache
from omniflatten_jax.model.families import DecoderOptions
from omniflatten_jax.model.layer_stack import run_layers
from omniflatten_jax.model.layers import Einsum, RMSNorm, param


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        e, f = cfg.hidden_size, cfg.intermediate_size
        dense = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.gate = Einsum("bte,ef->btf", (e, f), ("embed", "mlp"), **dense)
        self.up = Einsum("bte,ef->btf", (e, f), ("embed", "mlp"), **dense)
        self.down = Einsum("btf,fe->bte", (f, e), ("mlp", "embed"), **dense)

    def __call__(self, x):
        hidden = jax.nn.silu(self.gate(x)) * self.up(x)
        return self.down(constrain(hidden, ("batch", "length", "act_mlp")))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, options: DecoderOptions, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype)
        self.attn = Attention(cfg, options, rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, positions, segment_ids, cache=None, cache_write=None, cache_mask=None):
        attn_out, cache = self.attn(self.input_norm(x), positions, segment_ids, cache, cache_write,
                                    cache_mask)
        x = constrain(x + attn_out, ("batch", "length", "act_embed"))
        x = x + self.mlp(self.post_attn_norm(x))
        return constrain(x, ("batch", "length", "act_embed")), cache


class Decoder(nnx.Module):
    """The whole decoder of `cfg.family`."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, rngs: nnx.Rngs):
        self.cfg = cfg
        options = families.get(cfg.family).decoder
        self.embed = param(rngs, (vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg.param_dtype)
        self.layers = nnx.List([DecoderLayer(cfg, options, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype)
        self.lm_head = None if cfg.tie_embeddings else param(
            rngs, (cfg.hidden_size, vocab_size), ("embed", "vocab"), cfg.param_dtype)

    def __call__(self, tokens: jax.Array, positions: jax.Array,
                 segment_ids: jax.Array | None = None,
                 cache: tuple[LayerCache, ...] | None = None,
                 cache_write: CacheWrite | None = None, cache_mask: jax.Array | None = None,
                 hidden_only: bool = False):
        """``tokens [B, T]`` -> fp32 logits ``[B, T, vocab]`` (and the updated cache, if any);
        with `hidden_only`, the final normalised hidden states ``[B, T, embed]`` instead."""
        dtype = jnp.dtype(self.cfg.dtype)
        x = jnp.take(self.embed[...], tokens, axis=0).astype(dtype)
        x = constrain(x, ("batch", "length", "act_embed"))
        new_cache = []
        if cache is None:
            x = run_layers(list(self.layers), x, positions, segment_ids, remat=self.cfg.remat,
                           scan=self.cfg.scan_layers, dtype=dtype)
        else:  # decoding: a loop that threads each layer's cache
            for layer, layer_cache in zip(self.layers, cache):
                x, layer_cache = layer(x, positions, None, layer_cache, cache_write, cache_mask)
                new_cache.append(layer_cache)
        x = self.final_norm(x)
        if hidden_only:  # the loss projects it chunk by chunk (`training.loss`)
            return x, (None if cache is None else tuple(new_cache))
        logits = jnp.einsum("bte,ev->btv", x, self.head_weight())
        logits = constrain(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))
        return logits, (None if cache is None else tuple(new_cache))

    def head_weight(self) -> jax.Array:
        """The output projection ``[embed, vocab]`` in the compute dtype (the embedding,
        transposed, when tied)."""
        dtype = jnp.dtype(self.cfg.dtype)
        if self.lm_head is None:
            return self.embed[...].astype(dtype).T
        return self.lm_head[...].astype(dtype)
