"""The one decoding engine: feed tokens into a KV cache, then generate under legal-id masks.

Every generation in the project is this call: ASR and TTS evaluation (a left-padded prompt,
then tokens until a stop id), half-duplex turns, and chunk-synchronous duplex decoding (a
user speech chunk as heard, then the chunk's other positions). Each generated position i draws
from ``legal[pattern[i]]`` only, so a speech position can never emit text and vice versa.
One jitted call per feed-and-generate, shapes static: the cache is preallocated by the caller,
the parameters placed once (`placement.PlacedModel`), every sharding stated.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from omniflatten_jax.model import DecodeCache, Params, Transformer
from omniflatten_jax.placement import PlacedModel

NO_STOP = -1  # a stop id that matches nothing: generate exactly len(pattern) tokens


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Greedy when temperature is 0; else softmax(logits / temperature) over the legal ids,
    restricted to the `top_k` most likely of them when top_k > 0."""

    temperature: float = 0.0
    top_k: int = 0

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0:
            raise ValueError(f"temperature and top_k must be >= 0, got {self}")


def pick(logits: jax.Array, legal: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
    """``logits [B, vocab]`` -> one id per row, among the ids where ``legal [vocab]`` is true."""
    logits = jnp.where(legal, logits, -jnp.inf)
    if sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][..., -1:]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _feed_and_generate(model: Transformer, sampling: Sampling, params: Params,
                       cache: DecodeCache, fed: jax.Array, fed_valid: jax.Array,
                       legal: jax.Array, pattern: jax.Array, stop: jax.Array, key: jax.Array
                       ) -> tuple[jax.Array, DecodeCache]:
    logits, cache = model.extend(params, cache, fed, fed_valid)
    stop_fill = jnp.maximum(stop[0], 0)

    def body(i, carry):
        cache, last, out, done, key = carry
        key, sub = jax.random.split(key)
        token = jnp.where(done, stop_fill, pick(last, legal[pattern[i]], sub, sampling))
        done = done | jnp.isin(token, stop)
        logits, cache = model.extend(params, cache, token[:, None])
        return cache, logits[:, -1], out.at[:, i].set(token), done, key

    b = fed.shape[0]
    out = jnp.zeros((b, pattern.shape[0]), jnp.int32)
    done = jnp.zeros((b,), bool)
    cache, _, out, _, _ = jax.lax.fori_loop(
        0, pattern.shape[0], body, (cache, logits[:, -1], out, done, key))
    return out, cache


def feed_and_generate(placed: PlacedModel, cache: DecodeCache, fed: jax.Array,
                      fed_valid: jax.Array, legal: jax.Array, pattern: jax.Array,
                      stop: jax.Array, key: jax.Array, *, sampling: Sampling = Sampling()
                      ) -> tuple[jax.Array, DecodeCache]:
    """Appends ``fed [B, F]`` (``fed_valid`` false marks left padding), then generates
    ``[B, len(pattern)]`` tokens, token i under ``legal[pattern[i]]`` (``legal [M, vocab]``).

    A row that emits an id in ``stop`` emits ``stop[0]`` from then on (pass ``[NO_STOP]`` to
    never stop). Generated tokens enter the cache (donated), so the next call continues the
    context. Every argument is already on the mesh (`PlacedModel.put`); the generated tokens
    come back replicated, ready for `PlacedModel.get`.
    """
    batch, slots = cache.valid.shape
    cache_sharding = placed.cache_shardings(batch, slots)
    rows = placed.batch_sharding((batch, 1))
    rep = placed.replicated
    fn = placed.jit("feed_and_generate",
                    functools.partial(_feed_and_generate, placed.model, sampling),
                    sampling, batch, slots,
                    in_shardings=(placed.param_shardings, cache_sharding, rows, rows, rep, rep,
                                  rep, rep),
                    out_shardings=(rep, cache_sharding), donate_argnums=(1,))
    return fn(placed.params, cache, fed, fed_valid, legal, pattern, stop, key)


def prefill(placed: PlacedModel, cache: DecodeCache, tokens: jax.Array) -> DecodeCache:
    """Appends ``tokens [B, T]`` (all real) to the cache, generating nothing."""
    batch, slots = cache.valid.shape
    cache_sharding = placed.cache_shardings(batch, slots)
    model = placed.model
    fn = placed.jit("prefill", lambda params, c, t: model.extend(params, c, t)[1], batch, slots,
                    in_shardings=(placed.param_shardings, cache_sharding,
                                  placed.batch_sharding((batch, 1))),
                    out_shardings=cache_sharding, donate_argnums=(1,))
    return fn(placed.params, cache, tokens)
