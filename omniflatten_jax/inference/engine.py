"""The one decoding engine: feed tokens into a KV cache, then generate under legal-id masks.

Every generation in the project is this call: ASR and TTS evaluation (a left-padded prompt,
then tokens until a stop id), half-duplex turns, and chunk-synchronous duplex decoding (a
user speech chunk as heard, then the chunk's other positions). Each generated position i draws
from ``legal[pattern[i]]`` only, so a speech position can never emit text and vice versa,
drawn as its row's `RowPolicy` says: greedy or sampled, and, for a row with a silence id
(duplex streams), speak-or-listen decided first by thresholds (`config.DecodingPolicy`).
One jitted call per feed-and-generate, shapes static: the cache is preallocated by the caller,
the parameters placed once (`placement.PlacedModel`), every sharding stated. Rows are
independent: each has its own cache cursor, turn state and random key, and a call advances
only its ``active`` rows, so one compiled call serves conversations that start and end on
their own (`inference.session`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from omniflatten_jax.model import DecodeCache, Params, Transformer
from omniflatten_jax.model.placement import PlacedModel
from omniflatten_jax.model.transformer import reset_rows

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


class RowPolicy(NamedTuple):
    """How each row of ``legal`` is drawn (arrays ``[M]``, one entry per row), and the
    speak/listen decision of rows that have a silence id (`config.DecodingPolicy`): onset and
    stop thresholds and the onset memory are data, so a sweep over them compiles once."""

    temperature: jax.Array  # float32; 0 = greedy
    top_k: jax.Array  # int32; 0 = every legal id
    silent: jax.Array  # int32: the row's "nothing now" id, or -1 (drawn like any other id)
    onset: jax.Array  # float32: start speaking when accumulated P(speak) reaches this
    stop: jax.Array  # float32: stop speaking when P(silence) exceeds this
    memory: jax.Array  # float32: weight of the earlier silent positions' log P(silence)


class TurnState(NamedTuple):
    """Per batch row and legal row, carried from chunk to chunk: is the stream speaking, and
    the accumulated log P(silence) since it last spoke."""

    speaking: jax.Array  # bool [B, M]
    quiet: jax.Array  # float32 [B, M]


def row_policy(samplings: list[Sampling], silent: list[int] | None = None, *,
               onset: float = 0.5, stop: float = 0.5, memory: float = 0.0) -> RowPolicy:
    """Host arrays for `feed_and_generate`; `silent` None: no decision on any row (the
    silence id, if a row has one, is drawn like any other)."""
    m = len(samplings)
    silent = [-1] * m if silent is None else silent
    f32 = lambda v: np.full((m,), v, np.float32)  # noqa: E731
    return RowPolicy(np.asarray([s.temperature for s in samplings], np.float32),
                     np.asarray([s.top_k for s in samplings], np.int32),
                     np.asarray(silent, np.int32), f32(onset), f32(stop), f32(memory))


@dataclasses.dataclass(frozen=True)
class PlacedRows:
    """A `RowPolicy` on the mesh, with what must be known when tracing: the largest top-k,
    whether any row samples, whether any row decides speak or listen."""

    arrays: RowPolicy
    statics: tuple[int, bool, bool]

    @classmethod
    def create(cls, placed: PlacedModel, rows: RowPolicy) -> "PlacedRows":
        statics = (int(np.max(rows.top_k)), bool(np.any(rows.temperature > 0)),
                   bool(np.any(rows.silent >= 0)))
        return cls(RowPolicy(*(placed.put(np.asarray(a)) for a in rows)), statics)


def _draw(logits: jax.Array, legal: jax.Array, temperature: jax.Array, top_k: jax.Array,
          keys: jax.Array, max_top_k: int, sampled: bool) -> jax.Array:
    """``logits [B, vocab]`` -> one id per row among the `legal` ids: greedy at temperature 0,
    else drawn from softmax(logits / temperature) over the `top_k` most likely (0: all)."""
    logits = jnp.where(legal, logits, -jnp.inf)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if not sampled:
        return greedy
    scaled = logits / jnp.maximum(temperature, 1e-6)
    if max_top_k:
        kth = jax.lax.top_k(scaled, max_top_k)[0][:, jnp.clip(top_k - 1, 0, max_top_k - 1)]
        scaled = jnp.where((top_k > 0) & (scaled < kth[:, None]), -jnp.inf, scaled)
    drawn = jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)
    return jnp.where(temperature > 0, drawn, greedy)


def _decide(logits: jax.Array, legal: jax.Array, rows: RowPolicy, m: jax.Array,
            state: TurnState, keys: jax.Array, max_top_k: int, sampled: bool
            ) -> tuple[jax.Array, TurnState]:
    """One position of legal row `m`: speak or stay silent by the thresholds, then the
    content (`_draw` over the legal ids but the silence id). Rows without a silence id draw
    from all their legal ids."""
    silent = rows.silent[m]
    has = silent >= 0
    s = jnp.maximum(silent, 0)
    log_quiet = jax.nn.log_softmax(jnp.where(legal, logits, -jnp.inf), axis=-1)[:, s]
    speaking, quiet = state.speaking[:, m], state.quiet[:, m]
    accumulated = rows.memory[m] * quiet + log_quiet
    speak = jnp.where(speaking, jnp.exp(log_quiet) <= rows.stop[m],
                      -jnp.expm1(accumulated) >= rows.onset[m])
    content = _draw(logits, legal & ~((jnp.arange(legal.shape[0]) == s) & has),
                    rows.temperature[m], rows.top_k[m], keys, max_top_k, sampled)
    plain = _draw(logits, legal, rows.temperature[m], rows.top_k[m], keys, max_top_k, sampled)
    token = jnp.where(has, jnp.where(speak, content, s), plain)
    now_quiet = has & (token == s)
    state = TurnState(state.speaking.at[:, m].set(has & ~now_quiet),
                      state.quiet.at[:, m].set(jnp.where(now_quiet, accumulated, 0.0)))
    return token, state


def _feed_and_generate(model: Transformer, statics: tuple[int, bool, bool], params: Params,
                       cache: DecodeCache, fed: jax.Array, fed_valid: jax.Array,
                       legal: jax.Array, pattern: jax.Array, stop: jax.Array, keys: jax.Array,
                       rows: RowPolicy, state: TurnState, active: jax.Array
                       ) -> tuple[jax.Array, DecodeCache, TurnState, jax.Array]:
    max_top_k, sampled, decides = statics
    logits, cache = model.extend(params, cache, fed, fed_valid, active)
    stop_fill = jnp.maximum(stop[0], 0)
    before = state

    def body(i, carry):
        cache, last, out, done, keys, state = carry
        split = jax.vmap(jax.random.split)(keys)
        keys, sub = split[:, 0], split[:, 1]
        m = pattern[i]
        if decides:
            token, state = _decide(last, legal[m], rows, m, state, sub, max_top_k, sampled)
        else:
            token = _draw(last, legal[m], rows.temperature[m], rows.top_k[m], sub, max_top_k,
                          sampled)
        token = jnp.where(done, stop_fill, token)
        done = done | jnp.isin(token, stop)
        logits, cache = model.extend(params, cache, token[:, None], rows=active)
        return cache, logits[:, -1], out.at[:, i].set(token), done, keys, state

    b = fed.shape[0]
    out = jnp.zeros((b, pattern.shape[0]), jnp.int32)
    done = jnp.zeros((b,), bool)
    cache, _, out, _, after, state = jax.lax.fori_loop(
        0, pattern.shape[0], body, (cache, logits[:, -1], out, done, keys, state))
    # A row that sat out keeps its turn state and key: it resumes as if the call never was.
    state = jax.tree.map(lambda new, old: jnp.where(
        active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old), state, before)
    keys = jnp.where(active, after, keys)
    return out, cache, state, keys


def feed_and_generate(placed: PlacedModel, cache: DecodeCache, fed: jax.Array,
                      fed_valid: jax.Array, legal: jax.Array, pattern: jax.Array,
                      stop: jax.Array, keys: jax.Array, rows: PlacedRows, state: TurnState,
                      active: jax.Array
                      ) -> tuple[jax.Array, DecodeCache, TurnState, jax.Array]:
    """Appends ``fed [B, F]`` (``fed_valid`` false marks left padding), then generates
    ``[B, len(pattern)]`` tokens, token i under ``legal[pattern[i]]`` (``legal [M, vocab]``),
    drawn as ``rows`` says for row ``pattern[i]`` with each batch row's own key (``keys [B]``,
    `PlacedModel.keys`); `state` (`TurnState`, on the mesh: `place_state`) carries the
    speak/listen decisions across calls. Returns the tokens, the cache, the state and the keys,
    all updated for the ``active [B]`` rows only: the others keep their cache, state and key.

    A row that emits an id in ``stop`` emits ``stop[0]`` from then on (pass ``[NO_STOP]`` to
    never stop). Generated tokens enter the cache (donated), so the next call continues the
    context. The other arguments are already on the mesh (`PlacedModel.put`); the generated
    tokens come back replicated, ready for `PlacedModel.get`.
    """
    batch, slots = cache.valid.shape
    cache_sharding = placed.cache_shardings(batch, slots)
    rows_sharding = placed.batch_sharding((batch, 1))
    rep = placed.replicated  # the policy and the turn state are small: every device has them
    fn = placed.jit("feed_and_generate",
                    functools.partial(_feed_and_generate, placed.model, rows.statics),
                    rows.statics, batch, slots,
                    in_shardings=(placed.param_shardings, cache_sharding, rows_sharding,
                                  rows_sharding, rep, rep, rep, rep, rep, rep, rep),
                    out_shardings=(rep, cache_sharding, rep, rep), donate_argnums=(1,))
    return fn(placed.params, cache, fed, fed_valid, legal, pattern, stop, keys, rows.arrays,
              state, active)


def place_state(placed: PlacedModel, batch: int, rows: int) -> TurnState:
    """A fresh `TurnState` (silent, nothing accumulated) on the mesh."""
    return TurnState(placed.put(np.zeros((batch, rows), bool)),
                     placed.put(np.zeros((batch, rows), np.float32)))


def restart(placed: PlacedModel, cache: DecodeCache, rows: jax.Array,
            tokens: jax.Array | None) -> DecodeCache:
    """The ``rows [B]`` emptied, then given ``tokens [B, T]`` (all real; None: nothing), the
    other rows untouched: a new conversation starts on a row (with `reset_state`), or a row's
    context slides to its last chunks."""
    batch, slots = cache.valid.shape
    cache_sharding = placed.cache_shardings(batch, slots)
    rep = placed.replicated
    if tokens is None:
        fn = placed.jit("reset_rows", reset_rows, batch, slots,
                        in_shardings=(cache_sharding, rep), out_shardings=cache_sharding,
                        donate_argnums=(0,))
        return fn(cache, rows)
    model = placed.model

    def refill(params, cache, rows, tokens):
        return model.extend(params, reset_rows(cache, rows), tokens, rows=rows)[1]

    fn = placed.jit("restart", refill, batch, slots, tokens.shape[1],
                    in_shardings=(placed.param_shardings, cache_sharding, rep,
                                  placed.batch_sharding((batch, 1))),
                    out_shardings=cache_sharding, donate_argnums=(1,))
    return fn(placed.params, cache, rows, tokens)


def reset_state(placed: PlacedModel, state: TurnState, rows: jax.Array) -> TurnState:
    """``rows [B]`` silent with nothing accumulated; the others as they were."""
    rep = placed.replicated
    fn = placed.jit("reset_state", lambda s, r: TurnState(s.speaking & ~r[:, None],
                                                          jnp.where(r[:, None], 0.0, s.quiet)),
                    in_shardings=(rep, rep), out_shardings=rep)
    return fn(state, rows)
