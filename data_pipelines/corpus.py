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
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os

import numpy as np

from data_pipelines.synth import voices
from data_pipelines.synth.chatterbot import load_conversations
from data_pipelines.synth.espeak import Synthesizer, Voice
from omniflatten_jax.config import DataConfig
from omniflatten_jax.speech.audio import check_wave, load_audio, resample

SPLITS = ("train", "validation", "test")


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
class Item:
    id: str
    text: str
    speaker: str
    audio: FileAudio | SynthAudio  # what the user says (ASR input)
    tts_audio: FileAudio | SynthAudio  # how the model should say it (TTS target)


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


def manifest_items(path: str, cfg: DataConfig) -> dict[str, list[Item]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest {path} does not exist")
    base = os.path.dirname(os.path.abspath(path))
    items: dict[str, list[Item]] = {s: [] for s in SPLITS}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                audio, text = row["audio"], row["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: expected {{\"audio\": path, \"text\": ...}}, "
                                 f"got {line.strip()[:80]!r} ({e})") from None
            uid = str(row.get("id", f"line{n}"))
            split = (row.get("split")
                     or split_of(uid, cfg.validation_fraction, cfg.test_fraction))
            if split not in SPLITS:
                raise ValueError(f"{path}:{n}: split must be one of {SPLITS}, not {split!r}")
            ref = FileAudio(audio if os.path.isabs(audio) else os.path.join(base, audio))
            items[split].append(Item(uid, str(text), str(row.get("speaker", "")), ref, ref))
    return items


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
        raise ValueError(f"unknown data source {cfg.source!r}: use embedded, "
                         "librispeech:DIR or manifest:FILE.jsonl")
    if cfg.max_utterances:
        total = sum(len(v) for v in items.values())
        keep = cfg.max_utterances / max(total, 1)
        items = {s: v[:max(1, int(round(len(v) * keep)))] if v else v for s, v in items.items()}
    return items

