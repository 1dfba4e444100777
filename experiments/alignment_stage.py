"""The alignment stage: speech-text data -> ASR/TTS training -> held-out evaluation."""

from __future__ import annotations

import functools
import logging

import numpy as np

from data_pipelines.builders.speech_text import data_source
from data_pipelines.pipelines import alignment_pipeline
from data_pipelines.prepare import prepare_speech_text
from experiments.stage_runner import train_then_evaluate
from omniflatten_jax.config import ExperimentConfig
from omniflatten_jax.distributed import paths
from omniflatten_jax.evaluation.alignment import evaluate_alignment, format_table
from omniflatten_jax.model.placement import PlacedModel
from omniflatten_jax.stage_plan import StagePlan
from omniflatten_jax.training.runner import train_stage

log = logging.getLogger(__name__)

BASELINE_RECORDS = 20_000  # training records read for the trivial baselines


def _decode(record: dict) -> dict:
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in record.items()}


def run(cfg: ExperimentConfig, plan: StagePlan, workdir: str,
        init_from: str | None = None) -> dict:
    stage_dir = paths.join(workdir, plan.name)
    prepared = prepare_speech_text(cfg, workdir)
    train_source = data_source(prepared.data_dir, prepared.config_name, "train", cfg.layout)
    test_source = data_source(prepared.data_dir, prepared.config_name, "test", cfg.layout)
    log.info("alignment data: %d train / %d test utterances (%s)", len(train_source),
             len(test_source), paths.join(prepared.data_dir, prepared.config_name))

    def make_data():
        return alignment_pipeline(
            train_source, layout=cfg.layout, seq_len=plan.train.seq_len,
            batch_size=plan.train.batch_size,
            asr_fraction=cfg.data.asr_fraction, seed=plan.train.seed,
            num_packing_bins=cfg.data.num_packing_bins, num_workers=cfg.data.num_workers)

    @functools.cache
    def held_out():
        """Test records and the baselines' training statistics, read once, when first needed."""
        test = [_decode(test_source[i])
                for i in range(min(len(test_source), cfg.eval.max_examples))]
        train = [_decode(train_source[i])
                 for i in range(min(len(train_source), BASELINE_RECORDS))]
        codes = cfg.layout.speech_codes(np.concatenate([r["tts_speech_ids"] for r in train]))
        return test, [r["text"] for r in train], codes

    def evaluation_of(placed: PlacedModel) -> dict:
        test, train_texts, train_codes = held_out()
        return evaluate_alignment(placed, cfg.layout, test, train_texts, train_codes,
                                  max_examples=cfg.eval.max_examples,
                                  tts_max_examples=cfg.eval.tts_max_examples,
                                  batch_size=cfg.eval.batch_size)

    def evaluate(placed: PlacedModel, step):
        result = evaluation_of(placed)
        log.info("alignment eval at step %d:\n%s", step, format_table(result))
        return {"asr_cer": result["asr"]["cer"], "asr_wer": result["asr"]["wer"],
                "tts_code_accuracy": result["tts"]["code_accuracy"]}

    def train():
        return train_stage(cfg, plan, stage_dir, make_data, init_from=init_from,
                           evaluate=evaluate, speech_tokenizer=prepared.speech_tokenizer_bytes(),
                           data_fingerprint=prepared.fingerprint)

    def show(evaluation: dict, where: str) -> None:
        log.info("alignment eval at step %d (%s):\n%s", evaluation["step"], where,
                 format_table(evaluation))

    return train_then_evaluate(plan, workdir, train, lambda result: {
        "speech_tokenizer": prepared.tokenizer_path, **evaluation_of(result.placed)}, show)
