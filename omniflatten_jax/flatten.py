"""Streams <-> one flat token sequence, for every training stage.

Two families of layouts:

* Chunked (duplex_4, duplex_3, duplex_2). Every stream is dense per chunk,
  ``[..., n_chunks, chunk_len]`` (the ragged work of turning per-turn text into such arrays is done
  once, in numpy, by `omniflatten_jax.chunking`). ``flatten`` concatenates the streams along the
  chunk axis and reshapes; ``unflatten`` is its exact inverse. Both are pure and shape-static,
  work on numpy arrays (data workers) and jax arrays (on device, under jit/vmap) alike.

* Sequential (alignment ASR/TTS, half_duplex). Spans delimited by marker tokens, turn by turn;
  built in numpy and parsed back exactly by the ``parse_*`` functions.

Every flat sequence comes with a per-position stream id (`Stream`) and a loss mask that marks
the positions whose token the model is trained to predict. README.md, "Decisions", lists the
choices that the paper leaves open.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from omniflatten_jax.config import FlattenConfig
from omniflatten_jax.vocab import TokenLayout


class Stream(enum.IntEnum):
    CONTROL = 0  # marker tokens: [ASR] [SOS] [EOT] <user> ...
    USER_SPEECH = 1
    USER_TEXT = 2
    ASSISTANT_TEXT = 3
    ASSISTANT_SPEECH = 4
    PAD = 5  # filler added by packing

    @property
    def key(self) -> str:
        return self.name.lower()


def _xp(x):
    return np if isinstance(x, np.ndarray) else jnp


# --- chunked layouts ------------------------------------------------------------------------
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


CHUNKED_STAGES = ("duplex_4", "duplex_3", "duplex_2")


def chunk_layout(stage: str, cfg: FlattenConfig = FlattenConfig()) -> ChunkLayout:
    """The chunk layout of a duplex stage (speech x speech_chunk, text x text_chunk)."""
    us = (Stream.USER_SPEECH, cfg.speech_chunk)
    ut = (Stream.USER_TEXT, cfg.text_chunk)
    at = (Stream.ASSISTANT_TEXT, cfg.text_chunk)
    as_ = (Stream.ASSISTANT_SPEECH, cfg.speech_chunk)
    assistant = {Stream.ASSISTANT_TEXT, Stream.ASSISTANT_SPEECH}
    if stage == "duplex_4":
        loss = assistant | ({Stream.USER_TEXT} if cfg.user_text_loss else set())
        return ChunkLayout(stage, (us, ut, at, as_), frozenset(loss))
    if stage == "duplex_3":
        return ChunkLayout(stage, (us, at, as_), frozenset(assistant))
    if stage == "duplex_2":
        return ChunkLayout(stage, (us, as_), frozenset({Stream.ASSISTANT_SPEECH}))
    raise ValueError(f"{stage!r} is not a chunked stage; choose one of {CHUNKED_STAGES}")


# --- sequential layouts ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FlatSequence:
    """One flattened example: token ids, per-position `Stream`, loss mask (all the same length)."""

    tokens: np.ndarray
    streams: np.ndarray
    loss_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)


class _Builder:
    def __init__(self, layout: TokenLayout):
        self.layout = layout
        self.tokens, self.streams, self.loss = [], [], []

    def marker(self, name: str, loss: bool) -> "_Builder":
        return self.span(Stream.CONTROL, [self.layout.special(name)], loss)

    def span(self, stream: Stream, ids, loss: bool) -> "_Builder":
        ids = np.asarray(ids, np.int32).reshape(-1)
        self.tokens.append(ids)
        self.streams.append(np.full(len(ids), stream, np.int8))
        self.loss.append(np.full(len(ids), loss, bool))
        return self

    def build(self) -> FlatSequence:
        return FlatSequence(np.concatenate(self.tokens), np.concatenate(self.streams),
                            np.concatenate(self.loss))


def _check_ids(layout: TokenLayout, ids, kind: str) -> None:
    ids = np.asarray(ids)
    ok = layout.is_text(ids) & (ids >= 0) if kind == "text" else layout.is_speech(ids)
    if not np.all(ok):
        raise ValueError(f"{kind} span holds ids outside the layout's {kind} range: "
                         f"{np.asarray(ids)[~ok][:8].tolist()}")


def asr_sequence(layout: TokenLayout, speech_ids, text_ids) -> FlatSequence:
    """``[ASR][SOS] speech [EOS][SOT] text [EOT]``; loss on ``text [EOT]``."""
    _check_ids(layout, speech_ids, "speech")
    _check_ids(layout, text_ids, "text")
    return (_Builder(layout).marker("[ASR]", False).marker("[SOS]", False)
            .span(Stream.USER_SPEECH, speech_ids, False).marker("[EOS]", False)
            .marker("[SOT]", False).span(Stream.USER_TEXT, text_ids, True)
            .marker("[EOT]", True).build())


def tts_sequence(layout: TokenLayout, text_ids, speech_ids) -> FlatSequence:
    """``[TTS][SOT] text [EOT][SOS] speech [EOS]``; loss on ``speech [EOS]``."""
    _check_ids(layout, speech_ids, "speech")
    _check_ids(layout, text_ids, "text")
    return (_Builder(layout).marker("[TTS]", False).marker("[SOT]", False)
            .span(Stream.ASSISTANT_TEXT, text_ids, False).marker("[EOT]", False)
            .marker("[SOS]", False).span(Stream.ASSISTANT_SPEECH, speech_ids, True)
            .marker("[EOS]", True).build())


def _split_delimited(layout: TokenLayout, tokens: np.ndarray, start: int, open_: str,
                     close: str) -> tuple[np.ndarray, int]:
    """Reads ``open_ ... close`` at `start`; returns the inner ids and the index after `close`."""
    if start >= len(tokens) or tokens[start] != layout.special(open_):
        raise ValueError(f"expected {open_} at position {start}")
    hits = np.flatnonzero(tokens[start + 1:] == layout.special(close))
    if not len(hits):
        raise ValueError(f"{open_} at position {start} is never closed by {close}")
    end = start + 1 + int(hits[0])
    return tokens[start + 1:end], end + 1


def parse_alignment(layout: TokenLayout, tokens) -> tuple[str, np.ndarray, np.ndarray]:
    """Inverse of `asr_sequence` / `tts_sequence`: ``(task, speech_ids, text_ids)``."""
    tokens = np.asarray(tokens)
    if len(tokens) and tokens[0] == layout.special("[ASR]"):
        speech, i = _split_delimited(layout, tokens, 1, "[SOS]", "[EOS]")
        text, i = _split_delimited(layout, tokens, i, "[SOT]", "[EOT]")
        task = "asr"
    elif len(tokens) and tokens[0] == layout.special("[TTS]"):
        text, i = _split_delimited(layout, tokens, 1, "[SOT]", "[EOT]")
        speech, i = _split_delimited(layout, tokens, i, "[SOS]", "[EOS]")
        task = "tts"
    else:
        raise ValueError("an alignment sequence starts with [ASR] or [TTS]")
    if i != len(tokens):
        raise ValueError(f"{len(tokens) - i} trailing tokens after the {task} example")
    return task, speech, text


@dataclasses.dataclass(frozen=True)
class SpokenTurn:
    """One half-duplex turn: who speaks, what they say (text ids) and how it sounds (speech ids)."""

    role: str  # "user" or "assistant"
    text_ids: np.ndarray
    speech_ids: np.ndarray


def half_duplex_sequence(layout: TokenLayout, turns: Sequence[SpokenTurn],
                         cfg: FlattenConfig = FlattenConfig()) -> FlatSequence:
    """Turn by turn, no overlap:

    user:      ``<user> [SOS] speech [EOS] [SOT] text [EOT]``  (hear, then transcribe)
    assistant: ``<assistant> [SOT] text [EOT] [SOS] speech [EOS]``  (think, then speak)

    Loss on every assistant token, the ``<assistant>`` marker included (deciding to take the
    turn is part of the task); on the user's ``[SOT] text [EOT]`` only if `cfg.user_text_loss`.
    """
    b = _Builder(layout)
    for n, turn in enumerate(turns):
        _check_ids(layout, turn.speech_ids, "speech")
        _check_ids(layout, turn.text_ids, "text")
        if turn.role == "user":
            ut = cfg.user_text_loss
            (b.marker("<user>", False).marker("[SOS]", False)
             .span(Stream.USER_SPEECH, turn.speech_ids, False).marker("[EOS]", False)
             .marker("[SOT]", ut).span(Stream.USER_TEXT, turn.text_ids, ut).marker("[EOT]", ut))
        elif turn.role == "assistant":
            (b.marker("<assistant>", True).marker("[SOT]", True)
             .span(Stream.ASSISTANT_TEXT, turn.text_ids, True).marker("[EOT]", True)
             .marker("[SOS]", True).span(Stream.ASSISTANT_SPEECH, turn.speech_ids, True)
             .marker("[EOS]", True))
        else:
            raise ValueError(f"turn {n}: role must be 'user' or 'assistant', not {turn.role!r}")
    return b.build()


def parse_half_duplex(layout: TokenLayout, tokens) -> list[SpokenTurn]:
    """Inverse of `half_duplex_sequence`."""
    tokens = np.asarray(tokens)
    turns, i = [], 0
    while i < len(tokens):
        if tokens[i] == layout.special("<user>"):
            speech, i = _split_delimited(layout, tokens, i + 1, "[SOS]", "[EOS]")
            text, i = _split_delimited(layout, tokens, i, "[SOT]", "[EOT]")
            turns.append(SpokenTurn("user", text, speech))
        elif tokens[i] == layout.special("<assistant>"):
            text, i = _split_delimited(layout, tokens, i + 1, "[SOT]", "[EOT]")
            speech, i = _split_delimited(layout, tokens, i, "[SOS]", "[EOS]")
            turns.append(SpokenTurn("assistant", text, speech))
        else:
            raise ValueError(f"expected <user> or <assistant> at position {i}, got id {tokens[i]}")
    return turns
