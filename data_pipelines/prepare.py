"""Prepares a stage's data in the workdir, once: speech tokenizer, token layout, TFDS dataset.

Everything is cached under ``WORKDIR/data`` and keyed by the settings it depends on, so a
second run reuses it and a changed setting rebuilds only what it affects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time

from data_pipelines.builders import speech_text
from data_pipelines.corpus import speech_text_items, split_of
from omniflatten_jax.config import ExperimentConfig, to_dict
from omniflatten_jax.speech import load_speech_tokenizer
from omniflatten_jax.speech.audio import AudioError
from omniflatten_jax.speech.kmeans import KMeansMelTokenizer
from omniflatten_jax.stages import ALIGNMENT, dialogue_plans, plan_stage
from omniflatten_jax.transcripts import normalize_transcript

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PreparedData:
    data_dir: str  # the TFDS data_dir
    config_name: str  # the dataset's builder config (its cache key)
    tokenizer_path: str
    report: speech_text.BuildReport | dict

    def speech_tokenizer_bytes(self) -> bytes:
        """The tokenizer file itself: what every checkpoint of the stage stores."""
        with open(self.tokenizer_path, "rb") as f:
            return f.read()


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _file_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:10]


def speech_tokenizer(cfg: ExperimentConfig, data_root: str, items=None) -> str:
    """The tokenizer file: the configured one, or the embedded k-means one fitted once on the
    speech-text corpus (`items`, read from `cfg.data` when not given) with the alignment
    stage's seed: every stage's speech ids mean the same sounds."""
    if cfg.speech.tokenizer_path:
        tok = load_speech_tokenizer(cfg.speech.tokenizer_path)
        if tok.num_codes != cfg.layout.num_speech_codes:
            raise ValueError(f"{cfg.speech.tokenizer_path} has {tok.num_codes} codes but the "
                             f"token layout has {cfg.layout.num_speech_codes} speech ids")
        return cfg.speech.tokenizer_path
    seed = plan_stage(cfg, ALIGNMENT).train.seed
    source = {k: v for k, v in to_dict(cfg.data).items()
              if k in ("source", "language", "max_utterances", "min_audio_seconds")}
    key = _key(source, to_dict(cfg.speech), cfg.layout.num_speech_codes, seed)
    path = os.path.join(data_root, f"speech_tokenizer-{key}.npz")
    if os.path.isfile(path):
        return path
    start = time.perf_counter()
    items = items or speech_text_items(cfg.data, seed)
    mel = cfg.speech.mel
    waves = []
    for item in items["train"][:cfg.speech.fit_max_utterances]:
        for audio in {item.audio, item.tts_audio}:
            try:
                waves.append(audio.load(mel.sample_rate, cfg.data.min_audio_seconds))
            except AudioError:
                continue  # counted when the dataset is built
    tok = KMeansMelTokenizer.fit(waves, mel, cfg.layout.num_speech_codes, seed,
                                 cfg.speech.fit_max_frames)
    tmp = path + ".tmp"
    tok.save(tmp)
    os.replace(tmp, path)  # never leave a half-written tokenizer behind
    log.info("fitted the speech tokenizer (%d codes, %d Hz) on %d utterances in %.0f s: %s",
             tok.num_codes, mel.frame_rate, len(waves), time.perf_counter() - start, path)
    return path


def prepare_speech_text(cfg: ExperimentConfig, workdir: str) -> PreparedData:
    """The alignment stage's dataset (split and tokenized with its plan's seed, examples
    checked against its row length)."""
    plan = plan_stage(cfg, ALIGNMENT)
    data_root = os.path.join(os.path.abspath(workdir), "data")
    os.makedirs(data_root, exist_ok=True)
    items = speech_text_items(cfg.data, plan.train.seed)
    tokenizer_path = speech_tokenizer(cfg, data_root, items)
    data = {k: v for k, v in to_dict(cfg.data).items()
            if k not in ("asr_fraction", "num_workers", "num_packing_bins")}
    kind = cfg.data.source.split(":")[0]
    key = _key(data, cfg.layout.to_dict(), _file_hash(tokenizer_path), plan.train.seq_len,
               str(speech_text.OmniflattenSpeechText.VERSION))
    config_name = f"{kind}_{key}"
    train_texts = frozenset(normalize_transcript(item.text) for item in items["train"])
    context = speech_text.BuildContext(load_speech_tokenizer(tokenizer_path), cfg.layout,
                                       cfg.data, plan.train.seq_len, train_texts)
    data_dir = os.path.join(data_root, "tfds")
    start = time.perf_counter()
    fresh = not os.path.isdir(os.path.join(data_dir, speech_text.NAME, config_name))
    report = speech_text.build(data_dir, config_name, items, context)
    if fresh:
        skipped = sum(report.skipped.values())
        log.info("built speech-text dataset %s in %.0f s: kept %s, skipped %d %s",
                 config_name, time.perf_counter() - start, dict(report.kept), skipped,
                 dict(report.to_json()["skipped"]) if skipped else "")
    return PreparedData(data_dir, config_name, tokenizer_path, report)


def prepare_dialogues(cfg: ExperimentConfig, workdir: str) -> PreparedData:
    """Simulates, tokenizes and writes the dialogue dataset once for every dialogue stage of
    the curriculum (their plans share the dialogue training section: one seed, one row
    length), with the alignment stage's speech tokenizer."""
    from data_pipelines.builders import dialogues as dialogue_builder
    from data_pipelines.synth.dialogues import text_dialogues

    data_root = os.path.join(os.path.abspath(workdir), "data")
    os.makedirs(data_root, exist_ok=True)
    tokenizer_path = speech_tokenizer(cfg, data_root)  # the corpus is read only to fit one
    splits: dict[str, list] = {"train": [], "validation": [], "test": []}
    d = cfg.dialogue
    for uid, turns in text_dialogues(d):
        splits[split_of(uid, d.validation_fraction, d.test_fraction)].append((uid, turns))
    plans = dialogue_plans(cfg)
    seed = plans[0].train.seed
    key = _key(to_dict(d), cfg.layout.to_dict(), _file_hash(tokenizer_path),
               to_dict(cfg.flatten), plans[0].train.seq_len, [p.name for p in plans],
               cfg.data.normalize_text, seed, str(dialogue_builder.OmniflattenDialogues.VERSION))
    config_name = f"{d.source.split(':')[0]}_{key}"
    context = dialogue_builder.DialogueContext(
        load_speech_tokenizer(tokenizer_path), cfg.layout, d, seed, plans,
        cfg.data.normalize_text)
    data_dir = os.path.join(data_root, "tfds")
    fresh = not os.path.isdir(os.path.join(data_dir, dialogue_builder.NAME, config_name))
    start = time.perf_counter()
    report = dialogue_builder.build(data_dir, config_name, splits, context)
    if fresh:
        log.info("built dialogue dataset %s in %.0f s: %s", config_name,
                 time.perf_counter() - start, report)
    return PreparedData(data_dir, config_name, tokenizer_path, report)
