"""The ragged step: one dialogue's time-aligned streams -> dense per-chunk arrays.

This runs once per example in numpy (in the data pipeline); everything after it
(`tokens.chunk_layout.ChunkLayout.flatten` / `unflatten`) is dense and shape-static.

Decisions (README.md, "Decisions"; the configurable ones live in `FlattenConfig`):

* A turn's text starts in the chunk where its speech starts (an assistant turn may start
  ``assistant_text_lead_chunks`` earlier) and runs ``text_chunk`` tokens per chunk, leading its
  speech inside the chunk, then ``[EOT]`` (``text_end_marker``); ``[SOT]`` is optional.
* A text token never starts before its earliest frame: the turn's start frame, or the frame
  where its word is spoken when the caller passes per-token frames (word times).
* Where a stream has nothing to say it holds ``<silent_text>`` / ``<silent_speech>``; this is
  what fills the assistant streams while the user speaks. The last chunk is completed with
  ``<silent_speech>`` on both speech channels.
* Text that would run past the last chunk is an error (`TextOverflowError`), never truncated.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from omniflatten_jax.config import FlattenConfig
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.tokens.sequence import Stream


class TextOverflowError(ValueError):
    """A turn's text does not fit into the chunks before the dialogue ends."""


@dataclasses.dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    start: int  # first speech frame of the turn
    end: int  # one past its last speech frame
    text_ids: np.ndarray
    # Earliest frame at which each text token may be emitted (for example its word's start).
    token_frames: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class DialogueStreams:
    """A conversation at the speech frame rate, as token ids of one `TokenLayout`."""

    user_speech: np.ndarray  # [n_frames]: the user's channel as heard, silence included
    assistant_speech: np.ndarray  # [n_frames]: <silent_speech> where the assistant is silent
    turns: tuple[Turn, ...]

    @property
    def n_frames(self) -> int:
        return len(self.user_speech)


def pad_to_chunks(ids: np.ndarray, width: int, fill: int, n_chunks: int | None = None
                  ) -> np.ndarray:
    """``ids`` completed with `fill` to whole chunks of `width` (at least one, or `n_chunks`):
    how a speech channel's last chunk is filled, in training data and live decoding alike."""
    n_chunks = max(1, -(-len(ids) // width)) if n_chunks is None else n_chunks
    if len(ids) > n_chunks * width:
        raise ValueError(f"{len(ids)} ids do not fit into {n_chunks} chunks of {width}")
    padded = np.full(n_chunks * width, fill, np.int32)
    padded[:len(ids)] = ids
    return padded


def _text_chunks(turns: list[tuple[int, Turn]], layout: TokenLayout, cfg: FlattenConfig,
                 n_chunks: int, lead_chunks: int) -> np.ndarray:
    width = cfg.text_chunk
    slots = np.full(n_chunks * width, layout.special("<silent_text>"), np.int32)
    cursor = 0
    for index, turn in turns:
        ids = np.asarray(turn.text_ids, np.int32)
        frames = (np.full(len(ids), turn.start) if turn.token_frames is None
                  else np.asarray(turn.token_frames))
        if len(frames) != len(ids):
            raise ValueError(f"turn {index}: {len(frames)} token frames for {len(ids)} text ids")
        start_slot = max(turn.start // cfg.speech_chunk - lead_chunks, 0) * width
        earliest = np.maximum(frames // cfg.speech_chunk - lead_chunks, 0) * width
        if cfg.text_start_marker:
            ids = np.concatenate([[layout.special("[SOT]")], ids])
            earliest = np.concatenate([[start_slot], earliest])
        if cfg.text_end_marker:  # the cursor keeps it after the turn's last text token
            ids = np.concatenate([ids, [layout.special("[EOT]")]])
            earliest = np.concatenate([earliest, [start_slot]])
        for token, first_slot in zip(ids, earliest):
            cursor = max(cursor, int(first_slot))
            if cursor >= len(slots):
                raise TextOverflowError(
                    f"turn {index} ({turn.role}) text does not fit: it needs slots past the "
                    f"dialogue's last chunk ({n_chunks} chunks x {width} text tokens). Shorten "
                    f"the text, raise text_chunk, or end the dialogue later.")
            slots[cursor] = token
            cursor += 1
    return slots.reshape(n_chunks, width)


def dialogue_chunks(dialogue: DialogueStreams, layout: TokenLayout,
                    cfg: FlattenConfig = FlattenConfig()) -> dict[str, np.ndarray]:
    """All four streams as ``{stream key: int32 [n_chunks, width]}`` (a layout picks its own)."""
    n = dialogue.n_frames
    if len(dialogue.assistant_speech) != n:
        raise ValueError(f"user channel has {n} frames, assistant channel "
                         f"{len(dialogue.assistant_speech)}: the channels must be time-aligned")
    for name, channel in (("user", dialogue.user_speech), ("assistant", dialogue.assistant_speech)):
        ok = layout.is_speech(channel) | (channel == layout.special("<silent_speech>"))
        if not ok.all():
            raise ValueError(f"{name} speech holds ids that are neither speech codes nor "
                             f"<silent_speech>: {np.asarray(channel)[~ok][:8].tolist()}")
    for index, turn in enumerate(dialogue.turns):
        if turn.role not in ("user", "assistant"):
            raise ValueError(f"turn {index}: role must be 'user' or 'assistant', not {turn.role!r}")
        if not 0 <= turn.start <= turn.end <= n:
            raise ValueError(f"turn {index}: frames [{turn.start}, {turn.end}) lie outside the "
                             f"dialogue's {n} frames")
        text = np.asarray(turn.text_ids)
        if not np.all(layout.is_text(text) & (text >= 0)):
            raise ValueError(f"turn {index}: text ids outside the text range")

    n_chunks = max(1, -(-n // cfg.speech_chunk))
    silent_speech = layout.special("<silent_speech>")
    by_role = {role: sorted(((i, t) for i, t in enumerate(dialogue.turns) if t.role == role),
                            key=lambda it: it[1].start) for role in ("user", "assistant")}
    return {
        Stream.USER_SPEECH.key: pad_to_chunks(dialogue.user_speech, cfg.speech_chunk,
                                              silent_speech, n_chunks).reshape(n_chunks, -1),
        Stream.USER_TEXT.key: _text_chunks(by_role["user"], layout, cfg, n_chunks, 0),
        Stream.ASSISTANT_TEXT.key: _text_chunks(by_role["assistant"], layout, cfg, n_chunks,
                                                cfg.assistant_text_lead_chunks),
        Stream.ASSISTANT_SPEECH.key: pad_to_chunks(dialogue.assistant_speech, cfg.speech_chunk,
                                                   silent_speech, n_chunks).reshape(n_chunks, -1),
    }
