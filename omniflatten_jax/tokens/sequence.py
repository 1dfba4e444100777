"""The streams of a flat sequence, and the sequential layouts (alignment ASR/TTS, half_duplex).

Every flat sequence comes with a per-position stream id (`Stream`) and a loss mask that marks
the positions whose token the model is trained to predict. The sequential layouts are spans
delimited by marker tokens, turn by turn, built in numpy; the duplex stages' chunked layouts
are in `tokens.chunk_layout`. README.md, "Decisions", lists the choices that the paper leaves
open.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

import numpy as np

from omniflatten_jax.config import FlattenConfig
from omniflatten_jax.config.token_layout import TokenLayout


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
