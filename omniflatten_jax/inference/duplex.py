"""Chunk-synchronous full-duplex decoding, as the model would run live.

Per chunk: the user's speech chunk is fed as heard (teacher-forced); then every other position
of the chunk (user text in duplex_4, assistant text, assistant speech) is generated token by
token from the KV cache, each under the mask of the ids legal for its stream:

* text positions: text ids, <silent_text>, [EOT] (and [SOT] when turns carry it);
* speech positions: speech ids and <silent_speech>.

Generated tokens stay in the context. One jitted engine call (`inference.engine`) decodes one
chunk, so a caller can stream audio in and measure per-chunk latency. How each stream is drawn,
and how the model's speak/listen decision is read, is the stage's `DecodingPolicy` (stored in
its checkpoint; `DuplexSettings.policy`): a threshold on the probability of leaving silence,
then greedy or seeded temperature / top-k content per stream.

As a command, ``python -m omniflatten_jax.inference.duplex --checkpoint CKPT --input user.wav
--out_dir DIR`` streams a recording through a trained duplex stage (see `main`); the
checkpoint alone says how (`DuplexSettings.of_checkpoint`, its stored speech tokenizer).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import time
from collections.abc import Sequence

import jax
import numpy as np

from omniflatten_jax.checkpoint import CheckpointMeta
from omniflatten_jax.config import PARAM_PLACEMENTS, DecodingPolicy, FlattenConfig
from omniflatten_jax.config.stages import CHUNKED_STAGES
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.inference.engine import (
    NO_STOP,
    PlacedRows,
    feed_and_generate,
    place_state,
    prefill,
)
from omniflatten_jax.inference.policy import add_policy_flags, policy_from_flags, policy_rows
from omniflatten_jax.model.placement import PlacedModel
from omniflatten_jax.stage_plan import StagePlan
from omniflatten_jax.tokens.batches import fixed_groups
from omniflatten_jax.tokens.chunk_layout import ChunkLayout, chunk_layout
from omniflatten_jax.tokens.dialogue_chunks import pad_to_chunks
from omniflatten_jax.tokens.sequence import Stream


def legal_ids(layout: TokenLayout, stream: Stream, cfg: FlattenConfig) -> np.ndarray:
    """Boolean ``[vocab]``: the ids a position of `stream` may hold."""
    if stream in (Stream.USER_TEXT, Stream.ASSISTANT_TEXT):
        markers = ("[EOT]",) * cfg.text_end_marker + ("[SOT]",) * cfg.text_start_marker
        return layout.id_mask(text=True, specials=("<silent_text>",) + markers)
    if stream in (Stream.USER_SPEECH, Stream.ASSISTANT_SPEECH):
        return layout.id_mask(speech=True, specials=("<silent_speech>",))
    raise ValueError(f"nothing is generated on stream {stream.key}")


def chunk_masks(layout: TokenLayout, chunk: ChunkLayout,
                cfg: FlattenConfig) -> tuple[np.ndarray, np.ndarray]:
    """The engine's masks for one chunk: ``legal [streams generated, vocab]`` and, per
    generated position, the row of `legal` it draws from."""
    generated = chunk.streams[1:]
    legal = np.stack([legal_ids(layout, stream, cfg) for stream, _ in generated])
    pattern = np.repeat(np.arange(len(generated)), [width for _, width in generated])
    return legal, pattern.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class DuplexSettings:
    """What decoding a duplex model needs besides its weights: read from its checkpoint."""

    chunk: ChunkLayout
    flatten: FlattenConfig
    context_chunks: int  # the training window (`ChunkLayout.window_chunks`)
    policy: DecodingPolicy = DecodingPolicy()  # the stage's stored one, or the default

    @classmethod
    def of_plan(cls, plan: StagePlan, policy: DecodingPolicy = DecodingPolicy()
                ) -> "DuplexSettings":
        if plan.chunk is None:
            raise ValueError(f"{plan.name} is not a duplex stage")
        return cls(plan.chunk, plan.flatten, plan.context_chunks, policy)

    def with_policy(self, policy: DecodingPolicy) -> "DuplexSettings":
        return dataclasses.replace(self, policy=policy)

    @classmethod
    def of_checkpoint(cls, meta: CheckpointMeta, where: str) -> "DuplexSettings":
        if meta.stage is None:
            raise ValueError(
                f"{where} does not say which stage trained it (a checkpoint written before "
                "checkpoints described themselves, or an import). Add the description with "
                "`python -m omniflatten_jax.checkpoint.format_upgrade --checkpoint CKPT --out NEW "
                "--stage STAGE --speech_tokenizer FILE [--settings OLD_INFERENCE_JSON]`, then use "
                "NEW.")
        if meta.stage not in CHUNKED_STAGES or meta.context_chunks is None:
            raise ValueError(f"{where} is a checkpoint of the {meta.stage} stage; the duplex "
                             f"decoder runs a duplex stage: one of {CHUNKED_STAGES}")
        return cls(chunk_layout(meta.stage, meta.flatten), meta.flatten, meta.context_chunks,
                   meta.decoding or DecodingPolicy())


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


class DuplexDecoder:
    """Streams user speech through a duplex model chunk by chunk (the stateful shell).

    The model attends to at most `context_chunks` chunks: the window it was trained on. When
    the cache is full the context slides: the cache is rebuilt from the last `keep_chunks`
    chunks (user speech as heard, the rest as generated), positions restarting at 0 like a
    training window, so a stream of any length can be decoded with one preallocated cache.
    That rebuild is one prefill call, every ``context - keep`` chunks. The speak/listen state
    of each stream (`engine.TurnState`) goes on across chunks and slides.

    The parameters stay where `placed` put them; each chunk moves only its user speech ids to
    the devices and its generated ids back, both explicitly (`PlacedModel.put` / `get`).
    """

    def __init__(self, placed: PlacedModel, layout: TokenLayout, chunk: ChunkLayout,
                 cfg: FlattenConfig, *, batch: int, context_chunks: int,
                 keep_chunks: int | None = None, policy: DecodingPolicy = DecodingPolicy(),
                 seed: int | None = None):
        if chunk.streams[0][0] != Stream.USER_SPEECH:
            raise ValueError(f"{chunk.name}: a duplex chunk must start with the user's speech")
        keep = context_chunks // 2 if keep_chunks is None else keep_chunks
        if not 0 <= keep < context_chunks:
            raise ValueError(f"keep_chunks must be in [0, context_chunks={context_chunks}), "
                             f"got {keep}")
        self.placed, self.layout, self.chunk = placed, layout, chunk
        self.policy, self.batch = policy, batch
        self.width = chunk.streams[0][1]
        legal, pattern = chunk_masks(layout, chunk, cfg)
        self.legal, self.pattern = placed.put(legal), placed.put(pattern)
        self.rows = PlacedRows.create(placed, policy_rows(layout, chunk, policy))
        self.state = place_state(placed, batch, len(legal))
        self.fed_valid = placed.put(np.ones((batch, self.width), bool), batch=True)
        self.no_stop = placed.put(np.asarray([NO_STOP], np.int32))
        self.context_chunks, self.keep_chunks = context_chunks, keep
        self.slots = context_chunks * chunk.chunk_len
        self.cache = placed.init_cache(batch, self.slots)
        self.recent: collections.deque[np.ndarray] = collections.deque(maxlen=max(keep, 1))
        self.key = placed.key(policy.seed if seed is None else seed)
        self.chunks_done = self.in_cache = self.slides = 0
        self.latency = LatencyStats()  # wall time of each `step`, the slide included

    def _feed(self, cache, user: jax.Array, key: jax.Array, state):
        return feed_and_generate(self.placed, cache, user, self.fed_valid, self.legal,
                                 self.pattern, self.no_stop, key, self.rows, state)

    def compile(self) -> float:
        """Compiles every call streaming makes, on scratch caches, ahead of the first chunk (a
        live system must not stall mid-stream); returns the seconds it took.

        A chunk is decoded from a fresh cache, from a cache a chunk returned, and from a cache
        a slide rebuilt; the small programs of `step` (the key split) compile too."""
        start = time.perf_counter()
        _, key = jax.random.split(self.key)
        silent = self.layout.special("<silent_speech>")
        user = self.placed.put(np.full((self.batch, self.width), silent, np.int32), batch=True)
        state = place_state(self.placed, self.batch, self.state.speaking.shape[1])
        _, cache, state = self._feed(self.placed.init_cache(self.batch, self.slots), user, key,
                                     state)
        outputs = [self._feed(cache, user, key, state)]
        if self.keep_chunks:
            kept = self.placed.put(np.zeros((self.batch, self.keep_chunks * self.chunk.chunk_len),
                                            np.int32), batch=True)
            fresh = self.placed.init_cache(self.batch, self.slots)
            outputs.append(self._feed(prefill(self.placed, fresh, kept), user, key, state))
        jax.block_until_ready(outputs)
        return time.perf_counter() - start

    def _slide(self) -> None:
        self.cache = self.placed.init_cache(self.batch, self.slots)
        self.in_cache = 0
        if self.keep_chunks:
            kept = np.concatenate(list(self.recent)[-self.keep_chunks:], axis=1)
            self.cache = prefill(self.placed, self.cache, self.placed.put(kept, batch=True))
            self.in_cache = self.keep_chunks
        self.slides += 1

    def step(self, user_chunk: np.ndarray) -> np.ndarray:
        """One chunk: ``user_chunk [B, speech_chunk]`` ids -> the generated ``[B, rest]``."""
        start = time.perf_counter()
        user_chunk = np.asarray(user_chunk, np.int32)
        if self.in_cache == self.context_chunks:
            self._slide()
        self.key, key = jax.random.split(self.key)
        out, self.cache, self.state = self._feed(
            self.cache, self.placed.put(user_chunk, batch=True), key, self.state)
        out = self.placed.get(out)  # on the host: the chunk is complete
        self.latency.add((time.perf_counter() - start) * 1000)
        self.recent.append(np.concatenate([user_chunk, out], axis=1))
        self.chunks_done += 1
        self.in_cache += 1
        return out

    def run(self, user_speech: np.ndarray) -> np.ndarray:
        """Whole user channels ``[B, n_chunks * speech_chunk]`` -> the flattened sequences."""
        if user_speech.shape[1] % self.width:
            raise ValueError(f"the user channel ({user_speech.shape[1]} frames) is not whole "
                             f"chunks of {self.width}: pad it with "
                             "`tokens.dialogue_chunks.pad_to_chunks`")
        rows = []
        for lo in range(0, user_speech.shape[1], self.width):
            user = user_speech[:, lo:lo + self.width]
            rows.append(np.concatenate([user, self.step(user)], axis=1))
        return np.concatenate(rows, axis=1)


def decode_dialogues(placed: PlacedModel, layout: TokenLayout, settings: DuplexSettings,
                     user_channels: Sequence[np.ndarray], *, batch_size: int = 8
                     ) -> list[dict[str, np.ndarray]]:
    """Each user channel (speech ids per frame, as heard) -> the model's streams, unflattened:
    ``{stream key: [n_chunks, width]}`` over the channel completed to whole chunks with
    <silent_speech>. Channels are decoded `batch_size` at a time, each batch to its longest,
    under ``settings.policy`` (batch i seeded ``policy.seed + i * batch_size``)."""
    chunk = settings.chunk
    width = chunk.streams[0][1]
    silent = layout.special("<silent_speech>")
    results = []
    for lo, (group, n) in zip(range(0, len(user_channels), batch_size),
                              fixed_groups(user_channels, batch_size)):
        n_chunks = max(-(-len(c) // width) for c in group)
        user = np.stack([pad_to_chunks(c, width, silent, n_chunks) for c in group])
        decoder = DuplexDecoder(placed, layout, chunk, settings.flatten, batch=batch_size,
                                context_chunks=settings.context_chunks, policy=settings.policy,
                                seed=settings.policy.seed + lo)
        flat = decoder.run(user)
        results += [chunk.unflatten(row) for row in flat[:n]]
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m omniflatten_jax.inference.duplex --checkpoint CKPT --input user.wav
    --out_dir DIR``: the recording streamed through the model as if live (module docstring of
    `inference.recording` lists the files written). Everything but the audio comes from the
    checkpoint: the stage, its chunk layout, its context window and its speech tokenizer.
    Every failure is one line naming the file and the fix (`command_errors`)."""
    import argparse

    from omniflatten_jax.command_errors import add_verbose_flag, one_line_errors

    parser = argparse.ArgumentParser(
        prog="python -m omniflatten_jax.inference.duplex",
        description="Stream a recording through a duplex model chunk by chunk, as if live.")
    parser.add_argument("--checkpoint", required=True,
                        help="a duplex stage's checkpoints folder or one step folder in it")
    parser.add_argument("--input", required=True, help="the user's audio (any common format)")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--speech_tokenizer", help="a speech tokenizer file to use instead of "
                        "the checkpoint's own (same number of codes)")
    parser.add_argument("--params", choices=PARAM_PLACEMENTS, default="sharded",
                        help="parameters sharded over the local devices (FSDP, as trained) or "
                        "replicated on each (no gathers per token; the model must fit a chip)")
    add_policy_flags(parser)
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    with one_line_errors(args.verbose):
        summary = run_duplex(args)
    print(f"{args.input}: {summary['input_seconds']} s in {summary['chunks']} chunks of "
          f"{summary['chunk_audio_ms']:.0f} ms; decode latency per chunk mean "
          f"{summary['latency_ms']['mean']} ms, p95 {summary['latency_ms']['p95']} ms, max "
          f"{summary['latency_ms']['max']} ms ({summary['context_slides']} context slides; "
          f"compiled beforehand in {summary['compile_seconds']} s); real-time factor "
          f"{summary['real_time_factor']}")
    print(f"wrote {', '.join(sorted(os.listdir(args.out_dir)))} to {args.out_dir}")


def run_duplex(args) -> dict:
    """The command's work, cheapest checks first: the output folder and the input are checked
    before the checkpoint is read, and the checkpoint's description before its weights."""
    from omniflatten_jax import checkpoint
    from omniflatten_jax.inference.recording import (
        check_recording,
        prepare_out_dir,
        stream_recording,
    )
    from omniflatten_jax.speech.tokenizer import load_speech_tokenizer

    prepare_out_dir(args.out_dir)
    check_recording(args.input)
    meta = checkpoint.load_meta(args.checkpoint)
    directory, step = checkpoint.resolve(args.checkpoint)
    where = os.path.join(directory, str(step))
    settings = DuplexSettings.of_checkpoint(meta, where)
    settings = settings.with_policy(policy_from_flags(settings.policy, args))
    tokenizer = (load_speech_tokenizer(args.speech_tokenizer) if args.speech_tokenizer
                 else checkpoint.load_speech_tokenizer(where))
    if tokenizer.num_codes != meta.layout.num_speech_codes:
        raise ValueError(f"the speech tokenizer has {tokenizer.num_codes} codes but {where} was "
                         f"trained on {meta.layout.num_speech_codes}: give the tokenizer it "
                         "was trained with (or none: the checkpoint's own)")
    placed = PlacedModel.restore(where, placement=args.params)
    return stream_recording(placed, meta.layout, settings, tokenizer, tokenizer, args.input,
                            args.out_dir,
                            title=f"{meta.stage} {where} on {os.path.basename(args.input)}")


if __name__ == "__main__":
    main()
