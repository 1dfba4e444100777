"""Speech-text corpora as lists of utterances per split, from any of the supported sources.

* ``embedded``: the chatterbot-corpus turns, each spoken by a random user voice (the ASR
  input) and by the one assistant voice (the TTS target), split by conversation.
* ``librispeech:DIR``: LibriSpeech layout, ``DIR/<speaker>/<chapter>/*.trans.txt`` with
  ``<utterance id> <TRANSCRIPT>`` lines beside ``<utterance id>.flac`` (or .wav); split by
  chapter.
* ``manifest:FILE.jsonl``: one ``{"audio": path, "text": ...}`` per line, optionally with
  ``"id"``, ``"speaker"`` and ``"split"`` (train/validation/test); relative audio paths are
  relative to the manifest; without a split, utterances are split by id.

For a user's own corpus the TTS target is the utterance itself.

Bad input in the user's files (manifests here, dialogue files in `synth.dialogues`) follows
`DataConfig.on_bad_input`, the same as bad audio does in the builders:

* a line whose fields are wrong (``"audio"`` not a path string, ``"text"`` not a string or
  null, an unknown ``"split"``, an ``"id"`` used by an earlier line) is either kept as a
  *rejected* entry in its split, which the builder counts by split and reason in
  build_report.json (``skip``), or stops reading with the file, line and fix (``stop``);
* a line that cannot be parsed at all (not UTF-8, not JSON, not a JSON object) stops reading
  in either mode, naming file and line: it means a wrong, damaged or mis-encoded file, not
  one bad entry, and skipping it could silently shrink a corpus to nothing;
* a file with no entries, or none usable, is an error naming it.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from collections.abc import Iterator

import numpy as np

from data_pipelines.synth import voices
from data_pipelines.synth.chatterbot import load_conversations
from data_pipelines.synth.espeak import Synthesizer, Voice
from omniflatten_jax.config import DataConfig
from omniflatten_jax.speech.audio import AudioError, check_wave, load_audio, resample

SPLITS = ("train", "validation", "test")
STOP_HINT = ("Fix or remove it, or set data.on_bad_input=skip to skip such inputs and count "
             "them in build_report.json.")


class InputFileError(ValueError):
    """A source file that cannot be read as a corpus at all (not UTF-8, not JSON, empty, an
    unknown source): the message names the file (and line)."""


class BadInputError(ValueError):
    """An input that cannot become a training example.

    Raised with ``(reason, message)`` where it may be skipped and counted (the reason is the
    report's key, the message names the file, line or example and what is wrong); raised with
    one message, ending in the fix, where it stops the build (`stop_error`).
    """


def stop_error(message: str) -> BadInputError:
    """The error that stops a build on `message` under ``data.on_bad_input=stop``."""
    return BadInputError(f"{message.rstrip('.')}. {STOP_HINT}")


def check_policy(on_bad_input: str) -> None:
    if on_bad_input not in ("skip", "stop"):
        raise ValueError(f"on_bad_input must be skip or stop, not {on_bad_input!r}")


def jsonl_lines(path: str, expected: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of the JSONL file `path`.

    A line that is not UTF-8, not JSON or not a JSON object raises ValueError naming the file
    and line whatever the bad-input policy (see the module docstring); `expected` describes
    the form a line should have.
    """
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise InputFileError(f"{path}:{n}: not UTF-8 (byte {raw[e.start]:#04x} at column "
                                 f"{e.start + 1}): save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputFileError(f"{path}:{n}: not JSON ({e.msg} at column {e.colno}): "
                                 f"expected {expected}, got {line.strip()[:80]!r}") from None
            if not isinstance(row, dict):
                raise InputFileError(f"{path}:{n}: expected {expected}, got "
                                 f"{line.strip()[:80]!r}")
            yield n, row


@dataclasses.dataclass(frozen=True)
class FileAudio:
    path: str

    def load(self, sample_rate: int, min_seconds: float) -> np.ndarray:
        return load_audio(self.path, sample_rate, min_seconds)


@dataclasses.dataclass(frozen=True)
class SynthAudio:
    text: str
    voice: Voice

    def load(self, sample_rate: int, min_seconds: float) -> np.ndarray:
        synth = Synthesizer()
        spoken = synth.speak(self.text, self.voice)
        wave = resample(spoken.audio, synth.sample_rate, sample_rate)
        return check_wave(wave, sample_rate, f"eSpeak {self.voice.name} {self.text[:40]!r}",
                          min_seconds)


@dataclasses.dataclass(frozen=True)
class NoAudio:
    """The audio of a rejected entry: loading it fails with the entry's problem."""

    message: str

    def load(self, sample_rate: int, min_seconds: float) -> np.ndarray:
        raise AudioError(self.message)


@dataclasses.dataclass(frozen=True)
class Item:
    id: str
    text: str
    speaker: str
    audio: FileAudio | SynthAudio | NoAudio  # what the user says (ASR input)
    tts_audio: FileAudio | SynthAudio | NoAudio  # how the model should say it (TTS target)
    # (reason, message) of an entry rejected when its source was read: kept so that the
    # builder counts it in its split like every other bad input.
    problem: tuple[str, str] | None = None


def start_afresh_if_synthesised(item: Item) -> None:
    """Before an item's audio is made: a synthesised item then sounds the same whichever
    process synthesises it, after whatever else (`espeak.Synthesizer.start_afresh`)."""
    if isinstance(item.audio, SynthAudio) or isinstance(item.tts_audio, SynthAudio):
        Synthesizer.start_afresh()


def rejected_item(uid: str, reason: str, message: str) -> Item:
    audio = NoAudio(message)
    return Item(uid, "", "", audio, audio, (reason, message))


def split_of(key: str, validation_fraction: float, test_fraction: float) -> str:
    """A stable split from a hash of `key` (a conversation, chapter or utterance id)."""
    u = int(hashlib.md5(key.encode()).hexdigest()[:8], 16) / 2**32
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


def embedded_items(cfg: DataConfig, seed: int = 0) -> dict[str, list[Item]]:
    items: dict[str, list[Item]] = {s: [] for s in SPLITS}
    assistant = voices.assistant_voice(cfg.language)
    for c, conversation in enumerate(load_conversations(cfg.language)):
        split = split_of(f"conversation-{c}", cfg.validation_fraction,
                         cfg.test_fraction)
        for t, text in enumerate(conversation):
            rng = np.random.default_rng([seed, c, t])
            voice = voices.user_voice(cfg.language, rng)
            items[split].append(Item(f"chatterbot-{cfg.language}-{c:04d}-{t:02d}", text,
                                     voice.name, SynthAudio(text, voice),
                                     SynthAudio(text, assistant)))
    return items


def librispeech_items(root: str, cfg: DataConfig) -> dict[str, list[Item]]:
    transcripts = sorted(glob.glob(os.path.join(root, "*", "*", "*.trans.txt")))
    if not transcripts:
        raise FileNotFoundError(f"{root}: no */*/*.trans.txt files; expected the LibriSpeech "
                                "layout DIR/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt")
    items: dict[str, list[Item]] = {s: [] for s in SPLITS}
    for path in transcripts:
        folder = os.path.dirname(path)
        speaker, chapter = folder.split(os.sep)[-2:]
        split = split_of(f"{speaker}-{chapter}", cfg.validation_fraction, cfg.test_fraction)
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                uid, _, text = line.strip().partition(" ")
                audio = next((p for p in (os.path.join(folder, uid + ext)
                                          for ext in (".flac", ".wav")) if os.path.exists(p)),
                             os.path.join(folder, uid + ".flac"))
                ref = FileAudio(audio)
                items[split].append(Item(uid, text, speaker, ref, ref))
    return items


MANIFEST_LINE = '{"audio": "path", "text": "...", "id": ..., "split": ...} (id and split optional)'


def _optional_str(row: dict, key: str, where: str, default: str) -> str:
    """An optional string field (absent or null: `default`); ids may also be integers."""
    value = row.get(key)
    if value is None:
        return default
    if isinstance(value, str) or (key == "id" and isinstance(value, int)
                                  and not isinstance(value, bool)):
        return str(value)
    raise BadInputError("bad_field", f"{where}: {key!r} must be a string, not {value!r:.60}")


def manifest_item(row: dict, where: str, base: str, uid: str, split: str) -> Item:
    """One manifest line -> an Item; raises BadInputError(reason, message) for bad fields."""
    audio, text = row.get("audio"), row.get("text")
    if not isinstance(audio, str) or not audio.strip():
        raise BadInputError("bad_field", f"{where}: \"audio\" must be a path string (absolute "
                            f"or relative to the manifest), not {audio!r:.60}")
    if not isinstance(text, str):
        raise BadInputError("bad_field", f"{where}: \"text\" must be the transcript as a "
                            f"string, not {text!r:.60}")
    if split not in SPLITS:
        raise BadInputError("bad_field", f"{where}: \"split\" must be one of {SPLITS}, "
                            f"not {split!r:.60}")
    ref = FileAudio(audio if os.path.isabs(audio) else os.path.join(base, audio))
    return Item(uid, text, _optional_str(row, "speaker", where, ""), ref, ref)


def manifest_items(path: str, cfg: DataConfig) -> dict[str, list[Item]]:
    """The manifest's utterances per split; bad lines follow `cfg.on_bad_input` (see above)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest {path} does not exist")
    base = os.path.dirname(os.path.abspath(path))
    items: dict[str, list[Item]] = {s: [] for s in SPLITS}
    first_line: dict[str, int] = {}  # id -> the line that used it first
    for n, row in jsonl_lines(path, MANIFEST_LINE):
        where, uid, split = f"{path}:{n}", f"line{n}", None
        try:
            uid = _optional_str(row, "id", where, uid)
            split = row.get("split") or split_of(uid, cfg.validation_fraction,
                                                 cfg.test_fraction)
            if uid in first_line:
                raise BadInputError("duplicate_id", f"{where}: id {uid!r} is already the id of "
                                    f"line {first_line[uid]}: ids must be unique")
            item = manifest_item(row, where, base, uid, split)
            first_line[uid] = n
        except BadInputError as e:
            if cfg.on_bad_input == "stop":
                raise stop_error(e.args[1]) from None
            if split not in SPLITS:  # counted in the split its id falls in
                split = split_of(uid, cfg.validation_fraction, cfg.test_fraction)
            item = rejected_item(uid, *e.args)
        items[split].append(item)
    _check_usable(items, f"manifest {path}", "utterances")
    return items


def _check_usable(items: dict[str, list[Item]], source: str, what: str) -> None:
    """Stops on a source with no usable entries (empty, blank, or every line rejected)."""
    everything = [item for split in items.values() for item in split]
    rejected = [item.problem for item in everything if item.problem]
    if len(rejected) == len(everything):
        why = (f": every line was rejected ({len(rejected)}), e.g. {rejected[0][1]}" if rejected
               else " (the file is empty or blank)")
        raise InputFileError(f"{source} holds no {what}{why}")


def speech_text_items(cfg: DataConfig, seed: int = 0) -> dict[str, list[Item]]:
    """The utterances of `cfg.source`, per split (capped at `cfg.max_utterances` in total)."""
    kind, _, arg = cfg.source.partition(":")
    if kind == "embedded":
        items = embedded_items(cfg, seed)
    elif kind == "librispeech" and arg:
        items = librispeech_items(arg, cfg)
    elif kind == "manifest" and arg:
        items = manifest_items(arg, cfg)
    else:
        raise InputFileError(f"unknown data source {cfg.source!r}: use embedded, "
                         "librispeech:DIR or manifest:FILE.jsonl")
    if cfg.max_utterances:
        total = sum(len(v) for v in items.values())
        keep = cfg.max_utterances / max(total, 1)
        items = {s: v[:max(1, int(round(len(v) * keep)))] if v else v for s, v in items.items()}
    return items

