"""Parsers of the sequential layouts, the exact inverses the tests check the builders against."""

from __future__ import annotations

import numpy as np

from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.tokens.sequence import SpokenTurn


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
