"""Text dialogues: the embedded chatterbot conversations, or the user's JSONL.

JSONL: one dialogue per line, ``{"turns": [{"role": "user"|"assistant", "text": ...}, ...]}``.
The embedded conversations, mostly single exchanges, are joined into longer dialogues
(`DialogueConfig.join_to_turns`). Every dialogue is then cleaned (`clean_dialogue`): text is
normalised (`data.normalize_text`), turns with no words (punctuation or emoji only, which
speech cannot carry) are dropped, consecutive turns of one role are merged (the simulator
alternates speakers), and the dialogue is cut before its first turn longer than
`max_turn_chars` and after `max_turns` turns.

Nothing is dropped silently. `dialogue_entries` returns a dialogue that cannot be used as a
`Rejected` entry, which the builder counts by split and reason in build_report.json:

* ``bad_field`` (the file's line: "turns" not a list, a turn not an object, an unknown role,
  text not a string, e.g. null) and ``no_assistant_turn`` (no assistant turn with words)
  are problems of the user's file: under ``data.on_bad_input=stop`` they stop reading with
  the file, line and fix, under ``skip`` they are rejected entries;
* ``no_assistant_turn_after_cut`` (the limits cut every assistant turn away) follows from the
  settings, not the file, and so do all drops of the embedded corpus: always counted.

As for manifests (`data_pipelines.corpus`), a line that is not UTF-8, not JSON or not a JSON
object stops reading in either mode, and a file with no usable dialogues is an error.
"""

from __future__ import annotations

import dataclasses
import os

from data_pipelines.corpus import (
    BadInputError,
    InputFileError,
    check_policy,
    jsonl_lines,
    stop_error,
)
from data_pipelines.records import ROLES
from data_pipelines.synth.chatterbot import load_conversations
from omniflatten_jax.config import DialogueConfig
from omniflatten_jax.tokens.transcripts import (
    clean_transcript,
    normalize_transcript,
    wrong_script,
)

TextDialogue = list[tuple[str, str]]  # (role, text), in order
DIALOGUE_LINE = '{"turns": [{"role": "user" or "assistant", "text": "..."}, ...]}'


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A dialogue that cannot be used, kept in place so that the builder counts it."""

    reason: str
    message: str  # names the file and line (or the embedded dialogue) and what is wrong
    bad_input: bool = True  # a problem of the user's file (stops under on_bad_input=stop)


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


def clean_dialogue(turns: TextDialogue, cfg: DialogueConfig, normalize_text: bool,
                   where: str) -> TextDialogue:
    """The turns as they will be spoken and trained on (see the module docstring); raises
    BadInputError(reason, message) for one with no assistant turn. Cleaning twice changes
    nothing, so the builder can apply it to whatever it is given."""
    worded = []
    for i, (role, text) in enumerate(turns):
        if not normalize_transcript(text):
            continue
        text = normalize_transcript(text) if normalize_text else clean_transcript(text)
        why = wrong_script(text, cfg.language, "dialogue.language")
        if why:
            raise BadInputError("wrong_script", f"{where}: turn {i} {why}: its voice could not "
                                "speak it; fix the line, or set dialogue.language")
        worded.append((role, text))
    merged = _merge(worded)
    if not any(r == "assistant" for r, _ in merged):
        raise BadInputError("no_assistant_turn", f"{where}: no assistant turn with words in "
                            "it (punctuation and emoji are not spoken): a dialogue needs "
                            "one to train on")
    kept = _trim(merged, cfg)
    if not any(r == "assistant" for r, _ in kept):
        raise BadInputError("no_assistant_turn_after_cut", f"{where}: every assistant turn "
                            f"lies after a turn longer than dialogue.max_turn_chars="
                            f"{cfg.max_turn_chars} or beyond dialogue.max_turns="
                            f"{cfg.max_turns}")
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


def parse_turns(row: dict, where: str) -> TextDialogue:
    """A JSONL line's turns; raises BadInputError("bad_field", ...) naming what is wrong."""
    turns = row.get("turns")
    if not isinstance(turns, list):
        raise BadInputError("bad_field", f"{where}: \"turns\" must be a list of "
                            f"{{\"role\": ..., \"text\": ...}} objects, not {turns!r:.60}")
    parsed: TextDialogue = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadInputError("bad_field", f"{where}: turn {i} must be an object "
                                f"{{\"role\": ..., \"text\": ...}}, not {turn!r:.60}")
        role, text = turn.get("role"), turn.get("text")
        if role not in ROLES:
            raise BadInputError("bad_field", f"{where}: roles must be user or assistant, "
                                f"not {role!r} (turn {i})")
        if not isinstance(text, str):
            raise BadInputError("bad_field", f"{where}: \"text\" must be a string, not "
                                f"{text!r:.60} (turn {i})")
        parsed.append((role, text.strip()))
    return parsed


def read_jsonl(path: str, *, on_bad_input: str = "stop"
               ) -> list[tuple[str, TextDialogue | Rejected]]:
    """(id, turns) per line of the dialogue file `path` ("line<N>" ids), turns as written.

    A line with bad fields stops reading (``on_bad_input="stop"``, the default of the reader
    used on its own) or becomes a `Rejected` entry (``"skip"``); see the module docstring.
    """
    check_policy(on_bad_input)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dialogue file {path} does not exist")
    dialogues: list[tuple[str, TextDialogue | Rejected]] = []
    for n, row in jsonl_lines(path, DIALOGUE_LINE):
        try:
            dialogues.append((f"line{n}", parse_turns(row, f"{path}:{n}")))
        except BadInputError as e:
            if on_bad_input == "stop":
                raise stop_error(e.args[1]) from None
            dialogues.append((f"line{n}", Rejected(*e.args)))
    if not dialogues:
        raise InputFileError(f"dialogue file {path} holds no dialogues (the file is empty or "
                         f"blank): expected one {DIALOGUE_LINE} per line")
    return dialogues


def _embedded(cfg: DialogueConfig) -> list[tuple[str, TextDialogue]]:
    raw = [(f"chatterbot-{cfg.language}-{i:04d}",
            [("user" if j % 2 == 0 else "assistant", t) for j, t in enumerate(conv)])
           for i, conv in enumerate(load_conversations(cfg.language))]
    # Each conversation is cut at its own long turns before joining, not the whole join.
    return join_conversations([(uid, t) for uid, t in
                               ((uid, _trim(turns, cfg)) for uid, turns in raw) if t],
                              cfg.join_to_turns)


def _cleaned(turns: TextDialogue | Rejected, cfg: DialogueConfig,
             normalize_text: bool, where: str, from_file: bool, on_bad_input: str
             ) -> TextDialogue | Rejected:
    """One dialogue cleaned, or Rejected; stops on a problem of the user's file under stop."""
    if isinstance(turns, Rejected):
        return turns
    try:
        return clean_dialogue(turns, cfg, normalize_text, where)
    except BadInputError as e:
        # A problem of the file itself (not of a cut the configuration asked for).
        bad_input = from_file and e.args[0] in ("no_assistant_turn", "wrong_script")
        if bad_input and on_bad_input == "stop":
            raise stop_error(e.args[1]) from None
        return Rejected(*e.args, bad_input=bad_input)


def dialogue_entries(cfg: DialogueConfig, *, on_bad_input: str = "skip",
                     normalize_text: bool = True
                     ) -> list[tuple[str, TextDialogue | Rejected]]:
    """(id, turns) of every dialogue of `cfg.source`, cleaned, in a stable order, and
    (id, Rejected) for each one that cannot be used, for the builder to count in its split
    (`max_dialogues` counts usable ones). `on_bad_input` and `normalize_text` are the `data`
    settings of the same names."""
    check_policy(on_bad_input)
    kind, _, arg = cfg.source.partition(":")
    if kind == "embedded":
        raw: list[tuple[str, TextDialogue | Rejected]] = list(_embedded(cfg))
    elif kind == "jsonl" and arg:
        raw = read_jsonl(arg, on_bad_input=on_bad_input)
    else:
        raise InputFileError(f"unknown dialogue source {cfg.source!r}: use embedded or jsonl:FILE")
    entries: list[tuple[str, TextDialogue | Rejected]] = []
    usable = 0
    for uid, turns in raw:
        if cfg.max_dialogues and usable == cfg.max_dialogues:
            break
        where = f"{arg}:{uid.removeprefix('line')}" if kind == "jsonl" else uid
        entry = _cleaned(turns, cfg, normalize_text, where, kind == "jsonl", on_bad_input)
        usable += not isinstance(entry, Rejected)
        entries.append((uid, entry))
    if not usable:
        rejected = [t for _, t in entries if isinstance(t, Rejected)]
        raise InputFileError(f"dialogue source {cfg.source!r} holds no usable dialogues: every "
                         f"one was rejected ({len(rejected)}), e.g. {rejected[0].message}")
    return entries


def text_dialogues(cfg: DialogueConfig, *, on_bad_input: str = "skip",
                   normalize_text: bool = True) -> list[tuple[str, TextDialogue]]:
    """(id, turns) of every usable dialogue of `cfg.source` (`dialogue_entries` without the
    rejected ones: use that to have them counted)."""
    return [(uid, turns) for uid, turns in dialogue_entries(
        cfg, on_bad_input=on_bad_input, normalize_text=normalize_text)
        if not isinstance(turns, Rejected)]
