"""The dialogue stages: half_duplex, duplex_4, duplex_3, duplex_2.

Each starts, by default, from the final checkpoint of the stage before it in the curriculum
(same workdir), params only with a fresh optimiser; the runner checks every weight and the
token layout and records the lineage. Its held-out cross-entropy per stream goes to
``<workdir>/<stage>/eval.json``; half_duplex adds its generated replies to held-out turns; a
duplex stage adds the turn-taking metrics of the test dialogues decoded live, and writes the
settings the duplex command reads beside its checkpoints (``<workdir>/<stage>/inference.json``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import jax
import numpy as np

from data_pipelines.builders.dialogues import data_source
from data_pipelines.dialogue_examples import ROLES, spoken_turns, stage_examples
from data_pipelines.pipelines import dialogue_pipeline
from data_pipelines.prepare import prepare_dialogues
from omniflatten_jax import checkpoint
from omniflatten_jax.config import ExperimentConfig, to_dict
from omniflatten_jax.evaluation.cross_entropy import stream_cross_entropy
from omniflatten_jax.evaluation.half_duplex import evaluate_replies
from omniflatten_jax.evaluation.turn_taking import (
    evaluate_turn_taking,
    events,
    format_table,
    turn_taking_metrics,
)
from omniflatten_jax.flatten import CHUNKED_STAGES, chunk_layout
from omniflatten_jax.inference.duplex import INFERENCE_SETTINGS, training_window
from omniflatten_jax.model import transformer
from omniflatten_jax.training.runner import train_stage

log = logging.getLogger(__name__)

LOSS_NAMES = {"assistant_text": "assistant_text", "assistant_speech": "assistant_speech",
              "user_text": "user_text", "control": "markers"}


class MissingPredecessor(RuntimeError):
    """A stage was asked for before the stage it starts from."""


def predecessor_checkpoint(cfg: ExperimentConfig, stage: str, workdir: str) -> str:
    """The previous stage's final checkpoint step folder; a clear error when it is missing."""
    stages = cfg.stages
    if stage not in stages:
        raise ValueError(f"stage {stage} is not in curriculum {cfg.curriculum} {stages}")
    previous = stages[stages.index(stage) - 1]
    folder = os.path.join(os.path.abspath(workdir), previous, "checkpoints")
    steps = cfg.train.steps if previous == "alignment" else cfg.dialogue_train.steps
    try:
        directory, step = checkpoint.resolve(folder)
    except FileNotFoundError:
        raise MissingPredecessor(
            f"{stage} starts from the final checkpoint of {previous}, and {folder} has none. "
            f"Run `python experiments/run.py --stage={previous}` first (with the same "
            f"--workdir), or pass --init_from=CHECKPOINT.") from None
    if step < steps:
        raise MissingPredecessor(
            f"{previous} stopped at step {step} of {steps} ({folder}); finish it first with "
            f"`python experiments/run.py --stage={previous}`, or pass --init_from.")
    return os.path.join(directory, str(step))


def run(cfg: ExperimentConfig, workdir: str, stage: str, init_from: str | None = None) -> dict:
    stage_dir = os.path.join(os.path.abspath(workdir), stage)
    try:
        checkpoint.resolve(os.path.join(stage_dir, "checkpoints"))
        resuming = True  # the runner restores the stage's own latest step
    except FileNotFoundError:
        resuming = False
    if init_from is None and not resuming:
        init_from = predecessor_checkpoint(cfg, stage, workdir)
    prepared = prepare_dialogues(cfg, workdir)
    train_source = data_source(prepared.data_dir, prepared.config_name, "train", cfg.layout)
    test_source = data_source(prepared.data_dir, prepared.config_name, "test", cfg.layout)
    train = cfg.dialogue_train
    log.info("%s data: %d train / %d test dialogues", stage, len(train_source), len(test_source))

    def make_data(process_index, process_count):
        return dialogue_pipeline(
            train_source, stage=stage, layout=cfg.layout, flatten=cfg.flatten,
            seq_len=train.seq_len, batch_size=train.batch_size // process_count,
            seed=train.seed, num_packing_bins=cfg.data.num_packing_bins,
            num_workers=cfg.data.num_workers, process_index=process_index,
            process_count=process_count)

    stage_cfg = dataclasses.replace(cfg, train=train)
    result = train_stage(stage_cfg, stage, stage_dir, make_data, init_from=init_from,
                         loss_names=LOSS_NAMES)
    eval_path = os.path.join(stage_dir, "eval.json")
    if result.trained_steps == 0 and os.path.isfile(eval_path):
        with open(eval_path) as f:
            saved = json.load(f)
        if "turn_taking" in saved:
            log.info("%s turn-taking (saved, %d test dialogues):\n%s", stage,
                     saved["turn_taking"]["dialogues"],
                     format_table(saved["turn_taking"], saved["turn_taking_data"]))
        return saved
    records = [test_source[i] for i in range(min(len(test_source), cfg.eval.max_examples))]
    test = [seq for record in records
            for seq in stage_examples(record, cfg.layout, cfg.flatten, stage, train.seq_len)]
    model = transformer(cfg.model, cfg.layout.vocab_size)
    params = jax.device_get(result.params)
    ce = stream_cross_entropy(model, params, test, train.seq_len, cfg.layout.special("<pad>"),
                              cfg.eval.batch_size)
    evaluation = {"stage": stage, "step": result.step, "split": "test",
                  "examples": len(test), "cross_entropy": ce,
                  "lineage": list(result.meta.lineage)}
    log.info("%s test cross-entropy (nats/token): overall %.3f  %s", stage, ce["overall"],
             "  ".join(f"{k} {v:.3f}" for k, v in ce["per_stream"].items()))
    if stage == "half_duplex":
        evaluation["replies"] = replies(cfg, model, params, records)
    if stage in CHUNKED_STAGES:
        write_inference_settings(cfg, stage, stage_dir, prepared.tokenizer_path)
        evaluation |= turn_taking(cfg, stage, model, params, records)
    if jax.process_index() == 0:
        with open(eval_path, "w") as f:
            json.dump(evaluation, f, indent=2)
    return evaluation


def replies(cfg: ExperimentConfig, model, params, records) -> dict:
    """Held-out assistant turns generated half-duplex (text, then its speech)."""
    start = time.perf_counter()
    dialogues = [spoken_turns(record) for record in records]
    result = evaluate_replies(model, params, cfg.layout, cfg.flatten, dialogues,
                              max_prompt=cfg.dialogue_train.seq_len // 2,
                              max_examples=cfg.eval.max_examples,
                              batch_size=cfg.eval.batch_size)
    log.info("half_duplex replies to %d held-out turns in %.0f s: reply CER %.3f (empty reply "
             "%.3f), exact %.1f%%; speech ended with [EOS] %.1f%%, length ratio %.2f; e.g. %s",
             result["replies"], time.perf_counter() - start, result["reply_cer"],
             result["empty_reply_cer"], 100 * result["exact_replies"],
             100 * result["speech_ended"], result["speech_length_ratio"],
             result["examples"][:2])
    return result


def turn_taking(cfg: ExperimentConfig, stage: str, model, params, records) -> dict:
    """Every test dialogue decoded live; the metrics of the model and of the data itself."""
    start = time.perf_counter()
    dialogues = [(np.asarray(r["user_speech"]), turn_events(r)) for r in records]
    chunk = chunk_layout(stage, cfg.flatten)
    result = evaluate_turn_taking(
        model, params, cfg.layout, chunk, cfg.flatten, dialogues,
        frame_rate=cfg.speech.frame_rate, batch_size=cfg.eval.batch_size,
        context_chunks=training_window(cfg.dialogue_train.seq_len, chunk))
    data = turn_taking_metrics([(r["assistant_speech"], found) for r, (_, found)
                                in zip(records, dialogues)],
                               cfg.layout.special("<silent_speech>"), cfg.speech.frame_rate)
    result["dialogues"] = len(records)
    log.info("%s turn-taking on %d test dialogues, decoded live in %.0f s:\n%s", stage,
             len(records), time.perf_counter() - start, format_table(result, data))
    return {"turn_taking": result, "turn_taking_data": data}


def turn_events(record) -> list[tuple[str, int]]:
    """A dialogue record's turn changes, for `turn_taking.events`."""
    boundaries = record["boundaries"]  # TFDS text: bytes
    boundaries = boundaries.decode() if isinstance(boundaries, bytes) else str(boundaries)
    return events([ROLES[int(r)] for r in record["turn_roles"]], record["turn_starts"],
                  record["turn_ends"], boundaries.split(","))


def write_inference_settings(cfg: ExperimentConfig, stage: str, stage_dir: str,
                             tokenizer_path: str) -> None:
    """What the duplex command needs besides the weights: found beside the checkpoints."""
    chunk = chunk_layout(stage, cfg.flatten)
    settings = {"stage": stage, "config": cfg.name, "flatten": to_dict(cfg.flatten),
                "speech": to_dict(cfg.speech), "speech_tokenizer": os.path.abspath(tokenizer_path),
                "context_chunks": training_window(cfg.dialogue_train.seq_len, chunk)}
    if jax.process_index() == 0:
        with open(os.path.join(stage_dir, INFERENCE_SETTINGS), "w") as f:
            json.dump(settings, f, indent=2)
