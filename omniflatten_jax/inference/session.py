"""Live duplex decoding: conversations as batch rows that start, advance and end on their own.

A `DuplexSession` holds one compiled chunk step for ``rows`` conversations. Each row is its own
conversation: it starts (`start`: empty context, fresh speak/listen state, its own seed),
advances one chunk per `step` while it is active, and ends (`end`) while the others go on; a
row that sits a step out keeps its context, state and random key as they were. Every row
attends to at most ``context_chunks`` chunks, the window its stage was trained on: when a
row's context is full it slides on its own, its cache rebuilt from its last ``keep_chunks``
chunks (user speech as heard, the rest as generated), positions restarting at 0 like a
training window. A row's tokens equal decoding that conversation alone
(`tests/test_duplex_decoding.py` holds every row to a full-forward reference).

The session works on token ids; audio in and out is `inference.live` (per chunk, for a live
caller) or `inference.recording` (a file, read and written as it streams).

The parameters stay where `PlacedModel` put them; each step moves only its user speech ids to
the devices and its generated ids back, both explicitly (`PlacedModel.put` / `get`).
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Sequence

import jax
import numpy as np

from omniflatten_jax.inference.duplex import DuplexModel, chunk_masks
from omniflatten_jax.inference.engine import (
    NO_STOP,
    PlacedRows,
    feed_and_generate,
    place_state,
    reset_state,
    restart,
)
from omniflatten_jax.inference.policy import policy_rows
from omniflatten_jax.model.placement import PlacedModel
from omniflatten_jax.tokens.batches import fixed_groups
from omniflatten_jax.tokens.dialogue_chunks import pad_to_chunks
from omniflatten_jax.tokens.sequence import Stream


class LatencyStats:
    """Per-chunk decode times summarised as they come, in a fixed size: count, mean and max
    exactly; percentiles from a histogram of bins 0.5% wide (1 us to 1,000 s), so a reported
    p95 is within 0.25% of the exact one. An hour of streaming holds what a minute does."""

    RATIO = 1.005
    LOW_MS = 1e-3
    BINS = math.ceil(math.log(1e6 / LOW_MS) / math.log(RATIO))

    def __init__(self):
        self.count, self.total_ms, self.max_ms = 0, 0.0, 0.0
        self.histogram = np.zeros(self.BINS, np.int64)

    def add(self, ms: float) -> None:
        self.count += 1
        self.total_ms += ms
        self.max_ms = max(self.max_ms, ms)
        b = int(math.log(max(ms, self.LOW_MS) / self.LOW_MS) / math.log(self.RATIO))
        self.histogram[min(b, self.BINS - 1)] += 1

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.count if self.count else math.nan

    def percentile(self, q: float) -> float:
        """The `q`-th percentile (nearest rank), at its bin's geometric centre (never above
        the max)."""
        if not self.count:
            return math.nan
        rank = max(math.ceil(q / 100 * self.count), 1)
        b = int(np.searchsorted(np.cumsum(self.histogram), rank))
        return min(self.LOW_MS * self.RATIO ** (b + 0.5), self.max_ms)


class DuplexSession:
    """``rows`` independent conversations on one compiled chunk step (module docstring)."""

    def __init__(self, model: DuplexModel, rows: int = 1, *, keep_chunks: int | None = None):
        settings, placed, layout = model.settings, model.placed, model.layout
        chunk = settings.chunk
        if chunk.streams[0][0] != Stream.USER_SPEECH:
            raise ValueError(f"{chunk.name}: a duplex chunk must start with the user's speech")
        context = settings.context_chunks
        keep = context // 2 if keep_chunks is None else keep_chunks
        if not 0 <= keep < context:
            raise ValueError(f"keep_chunks must be in [0, context_chunks={context}), got {keep}")
        self.model, self.placed, self.layout, self.chunk = model, placed, layout, chunk
        self.policy, self.rows = settings.policy, rows
        self.width = chunk.streams[0][1]
        self.context_chunks, self.keep_chunks = context, keep
        legal, pattern = chunk_masks(layout, chunk, settings.flatten)
        self.legal, self.pattern = placed.put(legal), placed.put(pattern)
        self.row_policy = PlacedRows.create(placed, policy_rows(layout, chunk, settings.policy))
        self.fed_valid = placed.put(np.ones((rows, self.width), bool), batch=True)
        self.no_stop = placed.put(np.asarray([NO_STOP], np.int32))
        self.slots = context * chunk.chunk_len
        self.cache = placed.init_cache(rows, self.slots)
        self.state = place_state(placed, rows, len(legal))
        self.keys = placed.keys([settings.policy.seed] * rows)
        self.started = np.zeros(rows, bool)
        self.in_cache = np.zeros(rows, np.int64)  # chunks in each row's context
        self.recent = [collections.deque(maxlen=max(keep, 1)) for _ in range(rows)]
        self.chunks_done = self.slides = 0
        self.latency = LatencyStats()  # wall time of each `step`, its slides included

    # --- conversations ----------------------------------------------------------------------
    def start(self, rows: int | Sequence[int], seeds: int | Sequence[int] | None = None
              ) -> None:
        """New conversations on `rows` (whatever they held before is dropped): an empty
        context, silent streams, and each row's key from its seed (default: the policy's)."""
        rows = [rows] if isinstance(rows, int) else list(rows)
        seeds = ([self.policy.seed] * len(rows) if seeds is None
                 else [seeds] * len(rows) if isinstance(seeds, int) else list(seeds))
        mask = self._mask(rows)
        on = self.placed.put(mask)
        self.cache = restart(self.placed, self.cache, on, None)
        self.state = reset_state(self.placed, self.state, on)
        fresh = np.full(self.rows, self.policy.seed, np.int64)
        fresh[rows] = seeds
        self.keys = _select(self.placed, on, self.placed.keys(fresh.tolist()), self.keys)
        self.started |= mask
        self.in_cache[mask] = 0
        for row in rows:
            self.recent[row].clear()

    def end(self, rows: int | Sequence[int]) -> None:
        """The conversations on `rows` are over: the rows sit out every step until started."""
        self.started &= ~self._mask([rows] if isinstance(rows, int) else rows)

    def _mask(self, rows: Sequence[int]) -> np.ndarray:
        mask = np.zeros(self.rows, bool)
        for row in rows:
            if not 0 <= row < self.rows:
                raise ValueError(f"row {row} is not one of this session's {self.rows} rows")
            mask[row] = True
        return mask

    # --- decoding ---------------------------------------------------------------------------
    def step(self, user_chunk: np.ndarray) -> np.ndarray:
        """One chunk of every started row: ``user_chunk [rows, speech_chunk]`` speech ids ->
        the generated ``[rows, chunk_len - speech_chunk]`` (rows not started: ignored, and
        their output is meaningless)."""
        start = time.perf_counter()
        user_chunk = np.asarray(user_chunk, np.int32)
        if user_chunk.shape != (self.rows, self.width):
            raise ValueError(f"a step takes [{self.rows}, {self.width}] user speech ids, got "
                             f"{list(user_chunk.shape)}")
        active = self.started.copy()
        self.prepare()
        out, self.cache, self.state, self.keys = self._feed(
            self.cache, self.placed.put(user_chunk, batch=True), self.state, self.keys,
            self.placed.put(active))
        out = self.placed.get(out)  # on the host: the chunk is complete
        self.latency.add((time.perf_counter() - start) * 1000)
        for row in np.flatnonzero(active):
            self.recent[row].append(np.concatenate([user_chunk[row], out[row]]))
        self.in_cache[active] += 1
        self.chunks_done += 1
        return out

    def prepare(self) -> None:
        """Slides every started row whose context is full, as the next `step` would first.
        A server calls it after sending a step's replies, so that a slide (a prefill of the
        kept chunks for the whole batch) is not between a caller and its next chunk's reply;
        each row slides at the same point of its conversation either way."""
        full = self.started & (self.in_cache == self.context_chunks)
        if full.any():
            self._slide(full)

    def _feed(self, cache, user: jax.Array, state, keys, active):
        return feed_and_generate(self.placed, cache, user, self.fed_valid, self.legal,
                                 self.pattern, self.no_stop, keys, self.row_policy, state,
                                 active)

    def _slide(self, rows: np.ndarray) -> None:
        """The full `rows` keep their last ``keep_chunks`` chunks, positions from 0."""
        kept = None
        if self.keep_chunks:
            kept = np.zeros((self.rows, self.keep_chunks * self.chunk.chunk_len), np.int32)
            for row in np.flatnonzero(rows):
                kept[row] = np.concatenate(list(self.recent[row])[-self.keep_chunks:])
            kept = self.placed.put(kept, batch=True)
        self.cache = restart(self.placed, self.cache, self.placed.put(rows), kept)
        self.in_cache[rows] = self.keep_chunks
        self.slides += 1

    def compile(self) -> float:
        """Compiles every call streaming makes, on scratch state, ahead of the first chunk (a
        live system must not stall mid-stream); returns the seconds it took: a chunk from a
        fresh cache and from a cache a chunk returned, a start and a slide."""
        begin = time.perf_counter()
        placed, rows = self.placed, self.rows
        silent = self.layout.special("<silent_speech>")
        user = placed.put(np.full((rows, self.width), silent, np.int32), batch=True)
        every = placed.put(np.ones(rows, bool))
        state = place_state(placed, rows, self.state.speaking.shape[1])
        keys = placed.keys([0] * rows)
        cache = restart(placed, placed.init_cache(rows, self.slots), every, None)
        state = reset_state(placed, state, every)
        keys = _select(placed, every, keys, keys)
        _, cache, state, keys = self._feed(cache, user, state, keys, every)
        outputs = [self._feed(cache, user, state, keys, every)[0]]
        if self.keep_chunks:
            kept = placed.put(np.zeros((rows, self.keep_chunks * self.chunk.chunk_len),
                                       np.int32), batch=True)
            outputs.append(restart(placed, placed.init_cache(rows, self.slots), every, kept))
        jax.block_until_ready(outputs)
        return time.perf_counter() - begin

    def run(self, user_speech: np.ndarray, seeds: Sequence[int] | None = None) -> np.ndarray:
        """Whole user channels ``[rows, n_chunks * speech_chunk]``, one new conversation per
        row -> the flattened sequences."""
        if user_speech.shape[1] % self.width:
            raise ValueError(f"the user channel ({user_speech.shape[1]} frames) is not whole "
                             f"chunks of {self.width}: pad it with "
                             "`tokens.dialogue_chunks.pad_to_chunks`")
        self.start(range(self.rows), seeds)
        pieces = []
        for lo in range(0, user_speech.shape[1], self.width):
            user = user_speech[:, lo:lo + self.width]
            pieces.append(np.concatenate([user, self.step(user)], axis=1))
        return np.concatenate(pieces, axis=1)


def _select(placed: PlacedModel, rows: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    """``new`` where ``rows [B]``, else ``old``: per-row keys replaced on the devices."""
    rep = placed.replicated
    fn = placed.jit("select_rows", lambda r, a, b: jax.numpy.where(r, a, b),
                    in_shardings=(rep, rep, rep), out_shardings=rep)
    return fn(rows, new, old)


def decode_dialogues(model: DuplexModel, user_channels: Sequence[np.ndarray], *,
                     batch_size: int = 8) -> list[dict[str, np.ndarray]]:
    """Each user channel (speech ids per frame, as heard) -> the model's streams, unflattened:
    ``{stream key: [n_chunks, width]}`` over the channel completed to whole chunks with
    <silent_speech>. Channels are decoded `batch_size` at a time, each batch to its longest,
    under the model's policy; channel i is seeded ``policy.seed + i``, so its draws do not
    depend on the batch it fell in."""
    chunk = model.chunk
    width = chunk.streams[0][1]
    silent = model.layout.special("<silent_speech>")
    session = DuplexSession(model, batch_size)
    results = []
    for lo, (group, n) in zip(range(0, len(user_channels), batch_size),
                              fixed_groups(user_channels, batch_size)):
        n_chunks = max(-(-len(c) // width) for c in group)
        user = np.stack([pad_to_chunks(c, width, silent, n_chunks) for c in group])
        seeds = [model.settings.policy.seed + lo + i for i in range(batch_size)]
        flat = session.run(user, seeds)
        results += [chunk.unflatten(row) for row in flat[:n]]
    return results

