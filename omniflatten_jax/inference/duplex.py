"""Chunk-synchronous full-duplex decoding, as the model would run live.

Per chunk: the user's speech chunk is fed as heard (teacher-forced); then every other position
of the chunk (user text in duplex_4, assistant text, assistant speech) is generated token by
token from the KV cache, each under the mask of the ids legal for its stream:

* text positions: text ids, <silent_text>, [EOT] (and [SOT] when turns carry it);
* speech positions: speech ids and <silent_speech>.

Generated tokens stay in the context. One jitted call decodes one chunk, so a caller can
stream audio in and measure per-chunk latency. Greedy or temperature / top-k sampling, seeded.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from omniflatten_jax.config import FlattenConfig
from omniflatten_jax.flatten import ChunkLayout, Stream
from omniflatten_jax.model import DecodeCache, Params, Transformer
from omniflatten_jax.vocab import TokenLayout


@dataclasses.dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = all legal ids


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


def position_masks(layout: TokenLayout, chunk: ChunkLayout, cfg: FlattenConfig) -> np.ndarray:
    """``[generated positions per chunk, vocab]``: the legal ids at each generated position."""
    rows = [legal_ids(layout, stream, cfg) for stream, width in chunk.streams[1:]
            for _ in range(width)]
    return np.stack(rows)


def _pick(logits, legal, key, sampling: Sampling):
    logits = jnp.where(legal, logits, -jnp.inf)
    if sampling.temperature <= 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][..., -1:]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "sampling"), donate_argnames=("cache",))
def decode_chunk(model: Transformer, params: Params, cache: DecodeCache, user_chunk, masks,
                 key, *, sampling: Sampling = Sampling()):
    """Feeds ``user_chunk [B, speech_chunk]`` and generates ``[B, len(masks)]`` tokens."""
    logits, cache = model.extend(params, cache, user_chunk)
    n_gen = masks.shape[0]

    def body(i, carry):
        cache, last, out, key = carry
        key, sub = jax.random.split(key)
        token = _pick(last, masks[i], sub, sampling)
        out = out.at[:, i].set(token)
        logits, cache = model.extend(params, cache, token[:, None])
        return cache, logits[:, -1], out, key

    out = jnp.zeros((user_chunk.shape[0], n_gen), jnp.int32)
    cache, _, out, _ = jax.lax.fori_loop(0, n_gen, body, (cache, logits[:, -1], out, key))
    return out, cache


class DuplexDecoder:
    """Streams user speech through a duplex model chunk by chunk (stateful shell)."""

    def __init__(self, model: Transformer, params: Params, layout: TokenLayout,
                 chunk: ChunkLayout, cfg: FlattenConfig, *, batch: int, max_chunks: int,
                 sampling: Sampling = Sampling(), seed: int = 0):
        if chunk.streams[0][0] != Stream.USER_SPEECH:
            raise ValueError(f"{chunk.name}: a duplex chunk must start with the user's speech")
        self.model, self.params, self.layout, self.chunk = model, params, layout, chunk
        self.sampling = sampling
        self.masks = jnp.asarray(position_masks(layout, chunk, cfg))
        self.cache = model.init_cache(batch, max_chunks * chunk.chunk_len)
        self.key = jax.random.key(seed)
        self.max_chunks, self.chunks_done = max_chunks, 0

    def step(self, user_chunk: np.ndarray) -> np.ndarray:
        """One chunk: ``user_chunk [B, speech_chunk]`` ids -> the generated ``[B, rest]``."""
        if self.chunks_done >= self.max_chunks:
            raise ValueError(f"the decoder was sized for {self.max_chunks} chunks")
        self.key, key = jax.random.split(self.key)
        out, self.cache = decode_chunk(self.model, self.params, self.cache,
                                       jnp.asarray(user_chunk, jnp.int32), self.masks, key,
                                       sampling=self.sampling)
        self.chunks_done += 1
        return np.asarray(out)

    def run(self, user_speech: np.ndarray) -> np.ndarray:
        """Whole user channels ``[B, n_chunks * speech_chunk]`` -> the flattened sequences."""
        width = self.chunk.streams[0][1]
        rows = []
        for lo in range(0, user_speech.shape[1], width):
            user = user_speech[:, lo:lo + width]
            rows.append(np.concatenate([user, self.step(user)], axis=1))
        return np.concatenate(rows, axis=1)
