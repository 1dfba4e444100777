"""The duplex stages' chunked layouts: per-chunk streams <-> one flat token sequence.

Every stream is dense per chunk, ``[..., n_chunks, chunk_len]`` (the ragged work of turning
per-turn text into such arrays is done once, in numpy, by `tokens.dialogue_chunks`).
``flatten`` concatenates the streams along the chunk axis and reshapes; ``unflatten`` is its
exact inverse. Both are pure and shape-static, and work on numpy arrays (data workers) and jax
arrays (on device, under jit/vmap) alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from omniflatten_jax.config import FlattenConfig
from omniflatten_jax.config.stages import CHUNKED_STAGES, DUPLEX_2, DUPLEX_3, DUPLEX_4
from omniflatten_jax.tokens.sequence import Stream


def _xp(x):
    return np if isinstance(x, np.ndarray) else jnp


@dataclasses.dataclass(frozen=True)
class ChunkLayout:
    """The order and width of each stream inside one chunk, and which streams carry loss."""

    name: str
    streams: tuple[tuple[Stream, int], ...]
    loss_streams: frozenset[Stream]

    @property
    def chunk_len(self) -> int:
        return sum(width for _, width in self.streams)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(stream.key for stream, _ in self.streams)

    def flatten(self, chunks: Mapping[str, "np.ndarray | jnp.ndarray"]):
        """``{stream key: [..., n_chunks, width]}`` -> ``[..., n_chunks * chunk_len]``."""
        parts = [chunks[stream.key] for stream, _ in self.streams]
        for part, (stream, width) in zip(parts, self.streams):
            if part.shape[-1] != width:
                raise ValueError(f"{self.name}: stream {stream.key} has chunk width "
                                 f"{part.shape[-1]}, the layout expects {width}")
        xp = _xp(parts[0])
        joined = xp.concatenate(parts, axis=-1)
        return joined.reshape(*joined.shape[:-2], joined.shape[-2] * self.chunk_len)

    def unflatten(self, flat) -> dict:
        """The exact inverse of `flatten`. The length must be a whole number of chunks."""
        if flat.shape[-1] % self.chunk_len:
            raise ValueError(f"{self.name}: length {flat.shape[-1]} is not a multiple of the "
                             f"chunk length {self.chunk_len}")
        xp = _xp(flat)
        chunks = flat.reshape(*flat.shape[:-1], flat.shape[-1] // self.chunk_len, self.chunk_len)
        bounds = np.cumsum([width for _, width in self.streams])[:-1].tolist()
        return dict(zip(self.keys, xp.split(chunks, bounds, axis=-1)))

    def window_chunks(self, seq_len: int) -> int:
        """Chunks per training window of `seq_len` tokens. Long dialogues are cut into such
        windows for training, so it is also the most context a duplex decoder attends to."""
        if seq_len < self.chunk_len:
            raise ValueError(f"seq_len {seq_len} is shorter than one {self.name} chunk "
                             f"({self.chunk_len} tokens)")
        return seq_len // self.chunk_len

    def stream_ids(self, n_chunks: int) -> np.ndarray:
        """Per-position `Stream` of a flattened sequence of `n_chunks` chunks."""
        one = np.concatenate([np.full(width, stream, np.int8) for stream, width in self.streams])
        return np.tile(one, n_chunks)

    def loss_mask(self, n_chunks: int) -> np.ndarray:
        return np.isin(self.stream_ids(n_chunks), [int(s) for s in self.loss_streams])


def chunk_layout(stage: str, cfg: FlattenConfig = FlattenConfig()) -> ChunkLayout:
    """The chunk layout of a duplex stage (speech x speech_chunk, text x text_chunk)."""
    us = (Stream.USER_SPEECH, cfg.speech_chunk)
    ut = (Stream.USER_TEXT, cfg.text_chunk)
    at = (Stream.ASSISTANT_TEXT, cfg.text_chunk)
    as_ = (Stream.ASSISTANT_SPEECH, cfg.speech_chunk)
    assistant = {Stream.ASSISTANT_TEXT, Stream.ASSISTANT_SPEECH}
    if stage == DUPLEX_4:
        loss = assistant | ({Stream.USER_TEXT} if cfg.user_text_loss else set())
        return ChunkLayout(stage, (us, ut, at, as_), frozenset(loss))
    if stage == DUPLEX_3:
        return ChunkLayout(stage, (us, at, as_), frozenset(assistant))
    if stage == DUPLEX_2:
        return ChunkLayout(stage, (us, as_), frozenset({Stream.ASSISTANT_SPEECH}))
    raise ValueError(f"{stage!r} is not a chunked stage; choose one of {CHUNKED_STAGES}")
