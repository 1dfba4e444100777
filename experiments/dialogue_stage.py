"""The dialogue stages: half_duplex, duplex_4, duplex_3, duplex_2.

Each starts, by default, from the final checkpoint of the stage before it in the curriculum
(same workdir), params only with a fresh optimiser; the runner checks every weight and the
token layout and records the lineage. Its held-out cross-entropy per stream goes to
``<workdir>/<stage>/eval.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax

from data_pipelines.builders.dialogues import data_source
from data_pipelines.dialogue_examples import stage_examples
from data_pipelines.pipelines import dialogue_pipeline
from data_pipelines.prepare import prepare_dialogues
from omniflatten_jax import checkpoint
from omniflatten_jax.config import ExperimentConfig
from omniflatten_jax.evaluation.cross_entropy import stream_cross_entropy
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
            return json.load(f)
    test = [seq for i in range(min(len(test_source), cfg.eval.max_examples))
            for seq in stage_examples(test_source[i], cfg.layout, cfg.flatten, stage,
                                      train.seq_len)]
    model = transformer(cfg.model, cfg.layout.vocab_size)
    ce = stream_cross_entropy(model, jax.device_get(result.params), test, train.seq_len,
                              cfg.layout.special("<pad>"), cfg.eval.batch_size)
    evaluation = {"stage": stage, "step": result.step, "split": "test",
                  "examples": len(test), "cross_entropy": ce,
                  "lineage": list(result.meta.lineage)}
    if jax.process_index() == 0:
        with open(eval_path, "w") as f:
            json.dump(evaluation, f, indent=2)
    log.info("%s test cross-entropy (nats/token): overall %.3f  %s", stage, ce["overall"],
             "  ".join(f"{k} {v:.3f}" for k, v in ce["per_stream"].items()))
    return evaluation
