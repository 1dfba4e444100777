"""Chunk-synchronous full-duplex decoding, as the model would run live.

Per chunk: the user's speech chunk is fed as heard (teacher-forced); then every other position
of the chunk (user text in duplex_4, assistant text, assistant speech) is generated token by
token from the KV cache, each under the mask of the ids legal for its stream:

* text positions: text ids, <silent_text>, [EOT] (and [SOT] when turns carry it);
* speech positions: speech ids and <silent_speech>.

Generated tokens stay in the context. One jitted engine call (`inference.engine`) decodes one
chunk, so a caller can stream audio in and measure per-chunk latency. Greedy or temperature /
top-k sampling, seeded.

As a command, ``python -m omniflatten_jax.inference.duplex --checkpoint CKPT --input user.wav
--out_dir DIR`` streams a recording through a trained duplex stage (see `main`).
"""

from __future__ import annotations

import collections
import functools
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from omniflatten_jax.config import FlattenConfig
from omniflatten_jax.flatten import ChunkLayout, Stream
from omniflatten_jax.inference.engine import NO_STOP, Sampling, feed_and_generate
from omniflatten_jax.model import Params, Transformer
from omniflatten_jax.vocab import TokenLayout


def legal_ids(layout: TokenLayout, stream: Stream, cfg: FlattenConfig) -> np.ndarray:
    """Boolean ``[vocab]``: the ids a position of `stream` may hold."""
    legal = np.zeros(layout.vocab_size, bool)
    if stream in (Stream.USER_TEXT, Stream.ASSISTANT_TEXT):
        legal[:layout.text_vocab_size] = True
        legal[layout.special("<silent_text>")] = True
        if cfg.text_end_marker:
            legal[layout.special("[EOT]")] = True
        if cfg.text_start_marker:
            legal[layout.special("[SOT]")] = True
    elif stream in (Stream.USER_SPEECH, Stream.ASSISTANT_SPEECH):
        legal[layout.speech_offset:layout.special_offset] = True
        legal[layout.special("<silent_speech>")] = True
    else:
        raise ValueError(f"nothing is generated on stream {stream.key}")
    return legal


def chunk_masks(layout: TokenLayout, chunk: ChunkLayout,
                cfg: FlattenConfig) -> tuple[np.ndarray, np.ndarray]:
    """The engine's masks for one chunk: ``legal [streams generated, vocab]`` and, per
    generated position, the row of `legal` it draws from."""
    generated = chunk.streams[1:]
    legal = np.stack([legal_ids(layout, stream, cfg) for stream, _ in generated])
    pattern = np.repeat(np.arange(len(generated)), [width for _, width in generated])
    return legal, pattern.astype(np.int32)


def training_window(seq_len: int, chunk: ChunkLayout) -> int:
    """Chunks per training window (`dialogue_examples.duplex_windows`): the most context a
    duplex model saw in training, and so the most its decoder attends to."""
    return seq_len // chunk.chunk_len


@functools.partial(jax.jit, static_argnames=("model",), donate_argnames=("cache",))
def _prefill(model: Transformer, params: Params, cache, tokens):
    return model.extend(params, cache, tokens)[1]


class DuplexDecoder:
    """Streams user speech through a duplex model chunk by chunk (the stateful shell).

    The model attends to at most `context_chunks` chunks: the window it was trained on
    (``seq_len // chunk_len``). When the cache is full the context slides: the cache is rebuilt
    from the last `keep_chunks` chunks (user speech as heard, the rest as generated), positions
    restarting at 0 like a training window, so a stream of any length can be decoded with one
    preallocated cache. That rebuild is one prefill call, every ``context - keep`` chunks.
    """

    def __init__(self, model: Transformer, params: Params, layout: TokenLayout,
                 chunk: ChunkLayout, cfg: FlattenConfig, *, batch: int, context_chunks: int,
                 keep_chunks: int | None = None, sampling: Sampling = Sampling(),
                 seed: int = 0):
        if chunk.streams[0][0] != Stream.USER_SPEECH:
            raise ValueError(f"{chunk.name}: a duplex chunk must start with the user's speech")
        keep = context_chunks // 2 if keep_chunks is None else keep_chunks
        if not 0 <= keep < context_chunks:
            raise ValueError(f"keep_chunks must be in [0, context_chunks={context_chunks}), "
                             f"got {keep}")
        self.model, self.params, self.layout, self.chunk = model, params, layout, chunk
        self.sampling, self.batch = sampling, batch
        legal, pattern = chunk_masks(layout, chunk, cfg)
        self.legal, self.pattern = jnp.asarray(legal), jnp.asarray(pattern)
        self.no_stop = jnp.asarray([NO_STOP], jnp.int32)
        self.context_chunks, self.keep_chunks = context_chunks, keep
        self.cache = model.init_cache(batch, context_chunks * chunk.chunk_len)
        self.recent: collections.deque[np.ndarray] = collections.deque(maxlen=max(keep, 1))
        self.key = jax.random.key(seed)
        self.chunks_done = self.in_cache = self.slides = 0
        self.chunk_ms: list[float] = []  # wall time of each `step`, the slide included

    def compile(self) -> float:
        """Compiles every call streaming makes, on scratch caches, ahead of the first chunk (a
        live system must not stall mid-stream); returns the seconds it took.

        A chunk is decoded from a fresh cache, from a cache a chunk returned, and from a cache
        a slide rebuilt: the three can differ in placement, and so in the compiled program."""
        start = time.perf_counter()
        slots = self.context_chunks * self.chunk.chunk_len
        _, key = jax.random.split(self.key)  # the small programs of `step` compile too
        user = jnp.asarray(np.full((self.batch, self.chunk.streams[0][1]),
                                   self.layout.special("<silent_speech>"), np.int32))

        def feed(cache):
            return feed_and_generate(self.model, self.params, cache, user, None, self.legal,
                                     self.pattern, self.no_stop, key,
                                     sampling=self.sampling)[1]

        caches = [feed(feed(self.model.init_cache(self.batch, slots)))]
        if self.keep_chunks:
            kept = jnp.asarray(np.zeros((self.batch, self.keep_chunks * self.chunk.chunk_len),
                                        np.int32))
            caches.append(feed(_prefill(self.model, self.params,
                                        self.model.init_cache(self.batch, slots), kept)))
        jax.block_until_ready(caches)
        return time.perf_counter() - start

    def _slide(self) -> None:
        self.cache = self.model.init_cache(self.batch, self.context_chunks * self.chunk.chunk_len)
        self.in_cache = 0
        if self.keep_chunks:
            kept = np.concatenate(list(self.recent)[-self.keep_chunks:], axis=1)
            self.cache = _prefill(self.model, self.params, self.cache, jnp.asarray(kept))
            self.in_cache = self.keep_chunks
        self.slides += 1

    def step(self, user_chunk: np.ndarray) -> np.ndarray:
        """One chunk: ``user_chunk [B, speech_chunk]`` ids -> the generated ``[B, rest]``."""
        start = time.perf_counter()
        user_chunk = np.asarray(user_chunk, np.int32)
        if self.in_cache == self.context_chunks:
            self._slide()
        self.key, key = jax.random.split(self.key)
        out, self.cache = feed_and_generate(
            self.model, self.params, self.cache, jnp.asarray(user_chunk), None,
            self.legal, self.pattern, self.no_stop, key, sampling=self.sampling)
        out = np.asarray(out)  # on the host: the chunk is complete
        self.chunk_ms.append((time.perf_counter() - start) * 1000)
        self.recent.append(np.concatenate([user_chunk, out], axis=1))
        self.chunks_done += 1
        self.in_cache += 1
        return out

    def run(self, user_speech: np.ndarray) -> np.ndarray:
        """Whole user channels ``[B, n_chunks * speech_chunk]`` -> the flattened sequences."""
        width = self.chunk.streams[0][1]
        if user_speech.shape[1] % width:
            raise ValueError(f"the user channel ({user_speech.shape[1]} frames) is not whole "
                             f"chunks of {width}: pad it with <silent_speech>")
        rows = []
        for lo in range(0, user_speech.shape[1], width):
            user = user_speech[:, lo:lo + width]
            rows.append(np.concatenate([user, self.step(user)], axis=1))
        return np.concatenate(rows, axis=1)


def decode_dialogues(model: Transformer, params: Params, layout: TokenLayout,
                     chunk: ChunkLayout, cfg: FlattenConfig, user_channels: Sequence[np.ndarray],
                     *, context_chunks: int, batch_size: int = 8,
                     sampling: Sampling = Sampling(), seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Each user channel (speech ids per frame, as heard) -> the model's streams, unflattened:
    ``{stream key: [n_chunks, width]}`` over the channel padded with <silent_speech> to whole
    chunks. Channels are decoded `batch_size` at a time, each batch to its longest channel."""
    width = chunk.streams[0][1]
    silent = layout.special("<silent_speech>")
    results = []
    for lo in range(0, len(user_channels), batch_size):
        group = list(user_channels[lo:lo + batch_size])
        n = len(group)
        group += [group[-1]] * (batch_size - n)  # fixed batch shape: one compilation
        n_chunks = -(-max(len(c) for c in group) // width)
        user = np.full((batch_size, n_chunks * width), silent, np.int32)
        for i, channel in enumerate(group):
            user[i, :len(channel)] = channel
        decoder = DuplexDecoder(model, params, layout, chunk, cfg, batch=batch_size,
                                context_chunks=context_chunks, sampling=sampling,
                                seed=seed + lo)
        flat = decoder.run(user)
        results += [chunk.unflatten(row) for row in flat[:n]]
    return results


INFERENCE_SETTINGS = "inference.json"  # written by each duplex stage beside its checkpoints


def find_settings(checkpoint_path: str) -> str:
    """``<stage>/inference.json`` for a ``<stage>/checkpoints[/<step>]`` path."""
    from omniflatten_jax.checkpoint import resolve

    directory, _ = resolve(checkpoint_path)
    path = os.path.join(os.path.dirname(directory), INFERENCE_SETTINGS)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no {INFERENCE_SETTINGS} beside {directory} (each duplex stage of "
            "experiments/run.py writes one after training); pass --settings=FILE")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m omniflatten_jax.inference.duplex --checkpoint CKPT --input user.wav
    --out_dir DIR``: the recording streamed through the model as if live (module docstring of
    `inference.recording` lists the files written)."""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m omniflatten_jax.inference.duplex",
        description="Stream a recording through a duplex model chunk by chunk, as if live.")
    parser.add_argument("--checkpoint", required=True,
                        help="a duplex stage's checkpoints folder or one step folder in it")
    parser.add_argument("--input", required=True, help="the user's audio (any common format)")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--settings", help=f"the stage's {INFERENCE_SETTINGS} (default: "
                        "found beside the checkpoints)")
    parser.add_argument("--speech_tokenizer", help="override the settings' tokenizer file")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from omniflatten_jax.checkpoint import load_params
    from omniflatten_jax.config import FlattenConfig, from_dict
    from omniflatten_jax.flatten import chunk_layout
    from omniflatten_jax.inference.recording import stream_recording, write_outputs
    from omniflatten_jax.model import transformer
    from omniflatten_jax.speech.audio import AudioError
    from omniflatten_jax.speech.tokenizer import load_speech_tokenizer

    try:
        with open(args.settings or find_settings(args.checkpoint)) as f:
            settings = json.load(f)
        params, meta, where = load_params(args.checkpoint)
        tokenizer = load_speech_tokenizer(args.speech_tokenizer or settings["speech_tokenizer"])
        if tokenizer.num_codes != meta.layout.num_speech_codes:
            raise ValueError(f"the speech tokenizer has {tokenizer.num_codes} codes but "
                             f"{where} was trained on {meta.layout.num_speech_codes}")
        flatten = from_dict(FlattenConfig, settings["flatten"])
        chunk = chunk_layout(settings["stage"], flatten)
        model = transformer(meta.model, meta.layout.vocab_size)
        result = stream_recording(
            model, params, meta.layout, chunk, flatten, tokenizer, args.input,
            context_chunks=settings["context_chunks"],
            sampling=Sampling(args.temperature, args.top_k), seed=args.seed)
    except (AudioError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    summary = write_outputs(result, meta.layout, tokenizer, args.out_dir,
                            title=f"{settings['stage']} {where} on {os.path.basename(args.input)}")
    print(f"{args.input}: {summary['input_seconds']} s in {summary['chunks']} chunks of "
          f"{summary['chunk_audio_ms']:.0f} ms; decode latency per chunk mean "
          f"{summary['latency_ms']['mean']} ms, p95 {summary['latency_ms']['p95']} ms, max "
          f"{summary['latency_ms']['max']} ms ({summary['context_slides']} context slides; "
          f"compiled beforehand in {summary['compile_seconds']} s); real-time factor "
          f"{summary['real_time_factor']}")
    print(f"wrote {', '.join(sorted(os.listdir(args.out_dir)))} to {args.out_dir}")


if __name__ == "__main__":
    main()
