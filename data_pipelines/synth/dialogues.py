"""Text dialogues: the embedded chatterbot conversations, or the user's JSONL.

JSONL: one dialogue per line, ``{"turns": [{"role": "user"|"assistant", "text": ...}, ...]}``.
The embedded conversations, mostly single exchanges, are joined into longer dialogues
(`DialogueConfig.join_to_turns`). Consecutive turns of one role are merged (the simulator
alternates speakers). A dialogue is
cut before its first turn longer than `max_turn_chars` and after `max_turns` turns; one left
with no assistant turn is dropped (and counted by the caller).
"""

from __future__ import annotations

import json
import os

from data_pipelines.synth.chatterbot import load_conversations
from omniflatten_jax.config import DialogueConfig

TextDialogue = list[tuple[str, str]]  # (role, text), in order


def _merge(turns: TextDialogue) -> TextDialogue:
    merged: TextDialogue = []
    for role, text in turns:
        if merged and merged[-1][0] == role:
            merged[-1] = (role, merged[-1][1] + " " + text)
        else:
            merged.append((role, text))
    return merged


def _trim(turns: TextDialogue, cfg: DialogueConfig) -> TextDialogue:
    kept: TextDialogue = []
    for role, text in turns[:cfg.max_turns]:
        if len(text) > cfg.max_turn_chars:
            break
        kept.append((role, text))
    return kept


def join_conversations(raw: list[tuple[str, TextDialogue]], min_turns: int
                       ) -> list[tuple[str, TextDialogue]]:
    """Consecutive conversations joined until each has `min_turns` turns (the last group may
    have fewer); a joined dialogue keeps the id of its first conversation."""
    joined: list[tuple[str, TextDialogue]] = []
    uid, turns = "", []
    for conv_id, conv in raw:
        uid, turns = (uid or conv_id), turns + conv
        if len(turns) >= min_turns:
            joined.append((uid, turns))
            uid, turns = "", []
    if turns:
        joined.append((uid, turns))
    return joined


def read_jsonl(path: str) -> list[tuple[str, TextDialogue]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dialogue file {path} does not exist")
    dialogues = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                turns = [(t["role"], str(t["text"]).strip()) for t in json.loads(line)["turns"]]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: expected {{\"turns\": [{{\"role\": ..., "
                                 f"\"text\": ...}}]}} ({e})") from None
            bad = sorted({r for r, _ in turns} - {"user", "assistant"})
            if bad:
                raise ValueError(f"{path}:{n}: roles must be user or assistant, not {bad}")
            dialogues.append((f"line{n}", [(r, t) for r, t in turns if t]))
    return dialogues


def text_dialogues(cfg: DialogueConfig) -> list[tuple[str, TextDialogue]]:
    """(id, turns) of every usable dialogue of `cfg.source`, in a stable order."""
    kind, _, arg = cfg.source.partition(":")
    if kind == "embedded":
        raw = [(f"chatterbot-{cfg.language}-{i:04d}",
                [("user" if j % 2 == 0 else "assistant", t) for j, t in enumerate(conv)])
               for i, conv in enumerate(load_conversations(cfg.language))]
        # Each conversation is cut at its own long turns before joining, not the whole join.
        raw = join_conversations([(uid, t) for uid, t in
                                  ((uid, _trim(turns, cfg)) for uid, turns in raw) if t],
                                 cfg.join_to_turns)
    elif kind == "jsonl" and arg:
        raw = read_jsonl(arg)
    else:
        raise ValueError(f"unknown dialogue source {cfg.source!r}: use embedded or jsonl:FILE")
    dialogues = [(uid, _trim(_merge(turns), cfg)) for uid, turns in raw]
    dialogues = [(uid, t) for uid, t in dialogues if any(r == "assistant" for r, _ in t)]
    return dialogues[:cfg.max_dialogues] if cfg.max_dialogues else dialogues
