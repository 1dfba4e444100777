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
from omniflatten_jax.evaluation.text_metrics import normalize_transcript
from omniflatten_jax.speech import load_speech_tokenizer
from omniflatten_jax.speech.audio import AudioError
from omniflatten_jax.speech.kmeans import KMeansMelTokenizer, MelConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PreparedData:
    data_dir: str  # the TFDS data_dir
    config_name: str  # the dataset's builder config (its cache key)
    tokenizer_path: str
    report: speech_text.BuildReport | dict


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def speech_tokenizer(cfg: ExperimentConfig, data_root: str, items=None) -> str:
    """The tokenizer file: the configured one, or the embedded k-means one fitted once
    (on `items`, the speech-text corpus, read from `cfg.data` when not given)."""
    if cfg.speech.tokenizer_path:
        tok = load_speech_tokenizer(cfg.speech.tokenizer_path)
        if tok.num_codes != cfg.layout.num_speech_codes:
            raise ValueError(f"{cfg.speech.tokenizer_path} has {tok.num_codes} codes but the "
                             f"token layout has {cfg.layout.num_speech_codes} speech ids")
        return cfg.speech.tokenizer_path
    source = {k: v for k, v in to_dict(cfg.data).items()
              if k in ("source", "language", "max_utterances", "min_audio_seconds")}
    key = _key(source, to_dict(cfg.speech), cfg.layout.num_speech_codes, cfg.train.seed)
    path = os.path.join(data_root, f"speech_tokenizer-{key}.npz")
    if os.path.isfile(path):
        return path
    start = time.perf_counter()
    items = items or speech_text_items(cfg.data, cfg.train.seed)
    waves = []
    for item in items["train"][:cfg.speech.fit_max_utterances]:
        for audio in {item.audio, item.tts_audio}:
            try:
                waves.append(audio.load(cfg.speech.sample_rate, cfg.data.min_audio_seconds))
            except AudioError:
                continue  # counted when the dataset is built
    mel = MelConfig(cfg.speech.sample_rate, cfg.speech.frame_rate, cfg.speech.n_mels,
                    cfg.speech.n_fft)
    tok = KMeansMelTokenizer.fit(waves, mel, cfg.layout.num_speech_codes, cfg.train.seed,
                                 cfg.speech.fit_max_frames)
    tmp = path + ".tmp"
    tok.save(tmp)
    os.replace(tmp, path)  # never leave a half-written tokenizer behind
    log.info("fitted the speech tokenizer (%d codes, %d Hz) on %d utterances in %.0f s: "
                    "%s", tok.num_codes, cfg.speech.frame_rate, len(waves),
                    time.perf_counter() - start, path)
    return path


def prepare_speech_text(cfg: ExperimentConfig, workdir: str) -> PreparedData:
    data_root = os.path.join(os.path.abspath(workdir), "data")
    os.makedirs(data_root, exist_ok=True)
    items = speech_text_items(cfg.data, cfg.train.seed)
    tokenizer_path = speech_tokenizer(cfg, data_root, items)
    with open(tokenizer_path, "rb") as f:
        tokenizer_hash = hashlib.sha256(f.read()).hexdigest()[:10]
    data = {k: v for k, v in to_dict(cfg.data).items()
            if k not in ("asr_fraction", "num_workers", "num_packing_bins")}
    kind = cfg.data.source.split(":")[0]
    key = _key(data, cfg.layout.to_dict(), tokenizer_hash, cfg.train.seq_len,
               str(speech_text.OmniflattenSpeechText.VERSION))
    config_name = f"{kind}_{key}"
    train_texts = frozenset(normalize_transcript(item.text) for item in items["train"])
    context = speech_text.BuildContext(load_speech_tokenizer(tokenizer_path), cfg.layout,
                                       cfg.data, cfg.speech, cfg.train.seq_len, train_texts)
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
    """Simulates, tokenizes and writes the dialogue dataset once (same speech tokenizer as
    the alignment stage, so that speech ids mean the same sounds across stages)."""
    from data_pipelines.builders import dialogues as dialogue_builder
    from data_pipelines.dialogue_examples import DIALOGUE_STAGES
    from data_pipelines.synth.dialogues import text_dialogues

    data_root = os.path.join(os.path.abspath(workdir), "data")
    os.makedirs(data_root, exist_ok=True)
    tokenizer_path = speech_tokenizer(cfg, data_root)  # the corpus is read only to fit one
    with open(tokenizer_path, "rb") as f:
        tokenizer_hash = hashlib.sha256(f.read()).hexdigest()[:10]
    splits: dict[str, list] = {"train": [], "validation": [], "test": []}
    d = cfg.dialogue
    for uid, turns in text_dialogues(d):
        splits[split_of(uid, d.validation_fraction, d.test_fraction)].append((uid, turns))
    stages = tuple(s for s in cfg.stages if s in DIALOGUE_STAGES)
    key = _key(to_dict(d), cfg.layout.to_dict(), tokenizer_hash, to_dict(cfg.flatten),
               cfg.dialogue_train.seq_len, stages, cfg.data.normalize_text, cfg.train.seed,
               str(dialogue_builder.OmniflattenDialogues.VERSION))
    config_name = f"{d.source.split(':')[0]}_{key}"
    context = dialogue_builder.DialogueContext(
        load_speech_tokenizer(tokenizer_path), cfg.layout, d, cfg.speech.sample_rate,
        cfg.train.seed, cfg.flatten, cfg.dialogue_train.seq_len, stages, cfg.data.normalize_text)
    data_dir = os.path.join(data_root, "tfds")
    fresh = not os.path.isdir(os.path.join(data_dir, dialogue_builder.NAME, config_name))
    start = time.perf_counter()
    report = dialogue_builder.build(data_dir, config_name, splits, context)
    if fresh:
        log.info("built dialogue dataset %s in %.0f s: %s", config_name,
                 time.perf_counter() - start, report)
    return PreparedData(data_dir, config_name, tokenizer_path, report)
