"""The dialogue stages: half_duplex, duplex_4, duplex_3, duplex_2.

Each starts, by default, from the final checkpoint of its plan's predecessor (same workdir),
params only with a fresh optimiser; the runner checks every weight, the architecture, the
token layout and the speech tokenizer, and records the lineage. Its held-out cross-entropy
per stream goes to ``<workdir>/<stage>/eval.json``; half_duplex adds its generated replies to
held-out turns; a duplex stage adds the turn-taking metrics of the test dialogues decoded
live. Everything the duplex command needs is in the stage's checkpoints themselves.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from data_pipelines.builders.dialogues import data_source
from data_pipelines.dialogue_examples import spoken_turns, stage_examples
from data_pipelines.fdb_samples import clips as fdb_clips
from data_pipelines.pipelines import dialogue_pipeline
from data_pipelines.prepare import prepare_dialogues
from data_pipelines.records import dialogue_streams, spans, turn_changes
from experiments.stage_runner import train_then_evaluate
from omniflatten_jax import checkpoint
from omniflatten_jax.config import ExperimentConfig, to_dict
from omniflatten_jax.config.stages import HALF_DUPLEX
from omniflatten_jax.distributed import hosts, paths
from omniflatten_jax.evaluation.cross_entropy import stream_cross_entropy
from omniflatten_jax.evaluation.half_duplex import evaluate_replies
from omniflatten_jax.evaluation.operating_curve import TASKS as CURVE_TASKS
from omniflatten_jax.evaluation.operating_curve import (
    MuteModelError,
    choose,
    format_curve,
    plot_curves,
    score,
    sweep,
)
from omniflatten_jax.evaluation.turn_taking import (
    evaluate_turn_taking,
    events,
    format_table,
    span_events,
    turn_taking_metrics,
)
from omniflatten_jax.inference.duplex import DuplexModel, DuplexSettings
from omniflatten_jax.model.placement import PlacedModel
from omniflatten_jax.speech import load_speech_tokenizer
from omniflatten_jax.stage_plan import StagePlan, plan_stage
from omniflatten_jax.tokens.text_tokenizers import text_tokenizer
from omniflatten_jax.training.runner import train_stage

log = logging.getLogger(__name__)


# Onset thresholds a sweep may extend to when its best point lies at an end of its grid.
ONSET_LADDER = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.85, 0.95)


class MissingPredecessor(ValueError):
    """A stage was asked for before the stage it starts from."""


def predecessor_checkpoint(cfg: ExperimentConfig, plan: StagePlan, workdir: str) -> str:
    """The predecessor's final checkpoint step folder; a clear error when it is missing.

    "Final" is the step count its own checkpoint says it was planned for, so a predecessor
    trained with ``--steps=N`` hands over at step N."""
    previous = plan.predecessor
    folder = paths.join(workdir, previous, "checkpoints")
    try:
        directory, step = checkpoint.resolve(folder)
    except FileNotFoundError:
        raise MissingPredecessor(
            f"{plan.name} starts from the final checkpoint of {previous}, and {folder} has "
            f"none. Run `python experiments/run.py --stage={previous}` first (with the same "
            f"--workdir), or pass --init_from=CHECKPOINT.") from None
    where = paths.join(directory, str(step))
    steps = checkpoint.load_meta(where).planned_steps or plan_stage(cfg, previous).train.steps
    if step < steps:
        raise MissingPredecessor(
            f"{previous} stopped at step {step} of {steps} ({folder}); finish it first with "
            f"`python experiments/run.py --stage={previous}`, or pass --init_from.")
    return where


def run(cfg: ExperimentConfig, plan: StagePlan, workdir: str,
        init_from: str | None = None) -> dict:
    stage = plan.name
    stage_dir = paths.join(workdir, stage)
    try:
        checkpoint.resolve(paths.join(stage_dir, "checkpoints"))
        resuming = True  # the runner restores the stage's own latest step
    except FileNotFoundError:
        resuming = False
    if init_from is None and not resuming:
        init_from = predecessor_checkpoint(cfg, plan, workdir)
    prepared = prepare_dialogues(cfg, workdir)
    train_source = data_source(prepared.data_dir, prepared.config_name, "train", cfg.layout)
    test_source = data_source(prepared.data_dir, prepared.config_name, "test", cfg.layout)
    log.info("%s data: %d train / %d test dialogues", stage, len(train_source), len(test_source))

    def make_data():
        return dialogue_pipeline(
            train_source, plan=plan, layout=cfg.layout,
            batch_size=plan.train.batch_size,
            num_packing_bins=cfg.data.num_packing_bins, num_workers=cfg.data.num_workers)

    def train():
        return train_stage(cfg, plan, stage_dir, make_data, init_from=init_from,
                           speech_tokenizer=prepared.speech_tokenizer_bytes(),
                           data_fingerprint=prepared.fingerprint)

    def show(evaluation: dict, where: str) -> None:
        if "turn_taking" in evaluation:
            log.info("%s turn-taking (%s, %d test dialogues):\n%s", stage, where,
                     evaluation["turn_taking"]["dialogues"],
                     format_table(evaluation["turn_taking"], evaluation["turn_taking_data"]))

    return train_then_evaluate(
        plan, workdir, train,
        lambda result: evaluate(cfg, plan, result, prepared, test_source, stage_dir), show)


def evaluate(cfg: ExperimentConfig, plan: StagePlan, result, prepared, test_source,
             stage_dir: str) -> dict:
    """A trained dialogue stage on its held-out dialogues: per-stream cross-entropy; replies
    (half_duplex); the decoding policy chosen on validation, stored in the final checkpoint,
    then turn-taking and Full-Duplex-Bench under it (duplex stages)."""
    stage = plan.name
    records = [test_source[i] for i in range(min(len(test_source), cfg.eval.max_examples))]
    test = [seq for record in records for seq in stage_examples(record, cfg.layout, plan)]
    placed = result.placed
    ce = stream_cross_entropy(placed, test, plan.train.seq_len, cfg.layout.special("<pad>"),
                              cfg.eval.batch_size)
    evaluation = {"examples": len(test), "cross_entropy": ce,
                  "lineage": list(result.meta.lineage)}
    log.info("%s test cross-entropy (nats/token): overall %.3f  %s", stage, ce["overall"],
             "  ".join(f"{k} {v:.3f}" for k, v in ce["per_stream"].items()))
    if plan.kind == HALF_DUPLEX:
        evaluation["replies"] = replies(cfg, plan, placed, records)
    if plan.kind == "duplex":
        tokenizer = load_speech_tokenizer(prepared.tokenizer_path)
        source = data_source(prepared.data_dir, prepared.config_name, "validation", cfg.layout)
        validation = [source[i] for i in range(len(source))]
        chosen = choose_policy(cfg, plan, placed, validation, tokenizer, stage_dir)
        if hosts.is_primary():
            checkpoint.store_decoding(
                paths.join(stage_dir, "checkpoints", str(result.step)), chosen["policy"])
        model = DuplexModel(placed, cfg.layout, DuplexSettings.of_plan(plan, chosen["policy"]),
                            tokenizer, stage=plan.name)
        evaluation["decoding"] = {**chosen, "policy": to_dict(chosen["policy"])}
        evaluation |= turn_taking(cfg, plan, model, records)
        if cfg.eval.fdb_samples_per_task:
            evaluation |= full_duplex_bench(cfg, plan, model, records, stage_dir)
    return evaluation


def replies(cfg: ExperimentConfig, plan: StagePlan, placed: PlacedModel, records) -> dict:
    """Held-out assistant turns generated half-duplex (text, then its speech)."""
    start = time.perf_counter()
    dialogues = [spoken_turns(record) for record in records]
    result = evaluate_replies(placed, cfg.layout, plan.flatten, dialogues,
                              max_prompt=plan.train.seq_len // 2,
                              max_examples=cfg.eval.max_examples,
                              batch_size=cfg.eval.batch_size)
    log.info("half_duplex replies to %d held-out turns in %.0f s: reply CER %.3f (empty reply "
             "%.3f), exact %.1f%%; speech ended with [EOS] %.1f%%, length ratio %.2f; e.g. %s",
             result["replies"], time.perf_counter() - start, result["reply_cer"],
             result["empty_reply_cer"], 100 * result["exact_replies"],
             100 * result["speech_ended"], result["speech_length_ratio"],
             result["examples"][:2])
    return result


def choose_policy(cfg: ExperimentConfig, plan: StagePlan, placed: PlacedModel, records,
                  tokenizer, stage_dir: str) -> dict:
    """The stage's decoding policy: `cfg.decoding` with the onset threshold (`onset_grid`) and
    onset memory (`eval.policy_memories`) that best separate turn ends from pauses and
    interruptions from the user's long turns on the validation split's FDB clips
    (`operating_curve.choose`). The curve goes to ``<stage>/operating_curve.png``. A model
    that never speaks under the chosen policy fails the stage (`MuteModelError`): that is no
    result to store."""
    start = time.perf_counter()
    clips = fdb_clips([r for r in records if np.asarray(r["user_audio"]).size], tokenizer,
                      cfg.layout, text_tokenizer(cfg.layout).decode,
                      cfg.eval.policy_samples_per_task)
    if not clips:
        raise MuteModelError(f"{plan.name}: the validation split holds no dialogue with an "
                             "FDB moment to choose the decoding policy on; give more "
                             "dialogues (dialogue.validation_fraction)")
    points = []
    for memory in cfg.eval.policy_memories or (cfg.decoding.onset_memory,):
        base = dataclasses.replace(cfg.decoding, onset_memory=memory)
        model = DuplexModel(placed, cfg.layout, DuplexSettings.of_plan(plan, base), tokenizer,
                            stage=plan.name)
        points += onset_grid(cfg, model, clips, tokenizer.frame_rate)
    best = choose(points)
    policy = dataclasses.replace(cfg.decoding, onset_threshold=points[best]["onset_threshold"],
                                 onset_memory=points[best]["onset_memory"])
    onsets = sorted({p["onset_threshold"] for p in points})
    data = score(clips, [c.reference for c in clips], tokenizer.frame_rate)
    counts = {t: sum(c.task == t for c in clips) for t in CURVE_TASKS}
    curve = paths.join(stage_dir, "operating_curve.png")
    if hosts.is_primary():
        plot_curves(points, best, data, curve,
                    f"{plan.name} by onset threshold: FDB rules on the speech tokens of "
                    f"validation clips\n{counts}")
    log.info("%s decoding policy chosen on %d validation FDB clips in %.0f s (%s): %s\n%s",
             plan.name, len(clips), time.perf_counter() - start, curve, policy.describe(),
             format_curve(points, best, data))
    if not points[best]["spoke"]:
        raise MuteModelError(
            f"{plan.name}: the model never speaks on its {len(clips)} validation FDB clips "
            f"under the policy chosen for it ({policy.describe()}; onset thresholds tried: "
            f"{list(onsets)}, onset memories: {sorted({p['onset_memory'] for p in points})}):"
            f" it did not learn to take the turn. See {curve}; train it longer or on more "
            "dialogues, or try other eval.policy_onsets.")
    return {"policy": policy, "chosen": best, "validation_clips": counts, "curve": curve,
            "points": points, "data": data}


def onset_grid(cfg: ExperimentConfig, model: DuplexModel, clips, frame_rate: float
               ) -> list[dict]:
    """The sweep over `eval.policy_onsets` under the model's policy; where the best point lies
    at an end of that grid, the grid grows along `ONSET_LADDER` until a new end does no
    better."""
    onsets = sorted(cfg.eval.policy_onsets or (model.settings.policy.onset_threshold,))
    points = sweep(model, clips, onsets, frame_rate, batch_size=cfg.eval.batch_size)
    best = choose(points)
    while len(onsets) > 1 and best in (0, len(points) - 1):
        beyond = [t for t in ONSET_LADDER if (t < onsets[0] if best == 0 else t > onsets[-1])]
        if not beyond:
            break
        onset = max(beyond) if best == 0 else min(beyond)
        points = sorted(points + sweep(model, clips, [onset], frame_rate,
                                       batch_size=cfg.eval.batch_size),
                        key=lambda p: p["onset_threshold"])
        before, best = best + (onset < onsets[0]), choose(points)  # the old best, and the new
        onsets = sorted(onsets + [onset])
        if best == before:  # the new end did no better
            break
    return points


def turn_taking(cfg: ExperimentConfig, plan: StagePlan, model: DuplexModel, records) -> dict:
    """Every test dialogue decoded live; the metrics of the model and of the data itself."""
    start = time.perf_counter()
    frame_rate = model.speech.frame_rate
    cases = [(np.asarray(r["user_speech"]), record_events(r)) for r in records]
    grace = cfg.dialogue.simulation.backchannel_margin_s  # what the data was simulated with
    result = evaluate_turn_taking(model, cases, frame_rate=frame_rate, backchannel_grace_s=grace,
                                  batch_size=cfg.eval.batch_size)
    data = turn_taking_metrics([(r["assistant_speech"], found) for r, (_, found)
                                in zip(records, cases)],
                               cfg.layout.special("<silent_speech>"), frame_rate,
                               backchannel_grace_s=grace)
    result["dialogues"] = len(records)
    log.info("%s turn-taking on %d test dialogues, decoded live in %.0f s:\n%s", plan.name,
             len(records), time.perf_counter() - start, format_table(result, data))
    return {"turn_taking": result, "turn_taking_data": data}


def full_duplex_bench(cfg: ExperimentConfig, plan: StagePlan, model: DuplexModel, records,
                      stage_dir: str) -> dict:
    """Held-out dialogues as FDB v1 samples, streamed through the model as the duplex command
    streams a recording and scored by the FDB harness (`evaluation.fdb`). Every host decodes
    (the model may be sharded over them) into a folder of its own; process 0 keeps the
    samples with their output.wav in ``<stage>/fdb/``."""
    import tempfile

    from data_pipelines.fdb_samples import write_samples
    from omniflatten_jax.evaluation.fdb import score_root, stream_samples, streamer, task_dirs
    from omniflatten_jax.evaluation.fdb_folders import REFERENCE_ROWS
    from omniflatten_jax.evaluation.fdb_score import format_table as fdb_table
    from omniflatten_jax.evaluation.fdb_score import not_scored, table_row

    start = time.perf_counter()
    tokenizer = model.speech
    with tempfile.TemporaryDirectory() as root:
        counts = write_samples([r for r in records if np.asarray(r["user_audio"]).size], root,
                               tokenizer.sample_rate, tokenizer.frame_rate,
                               text_tokenizer(cfg.layout).decode, cfg.eval.fdb_samples_per_task,
                               resynthesis=(tokenizer, cfg.layout))
        if not any(counts.values()):
            return {}
        for task_dir in task_dirs(root):
            stream_samples(streamer(model), task_dir)
        result = score_root(root)
        target = paths.join(stage_dir, "fdb")
        if hosts.is_primary():
            paths.copy_tree(root, target)
    for name, scores in result["model"].items():  # where the samples are kept
        scores["folder"] = paths.join(target, name)
        if "not_scored" in scores:
            scores["not_scored"] = scores["not_scored"].replace(root, target)
    rows = {plan.name: table_row(result["model"])}
    rows |= {row: table_row(result[row]) for row in REFERENCE_ROWS if result[row]}
    log.info("%s on Full-Duplex-Bench v1 samples of the held-out dialogues (%s), in %.0f s:"
             "\n%s", plan.name, counts, time.perf_counter() - start,
             fdb_table(rows, not_scored(result["model"])))
    return {"fdb": result}


def record_events(record) -> list[tuple]:
    """A dialogue record's scored turn changes (`turn_taking.events`) and spans (pauses, user
    backchannels: `turn_taking.span_events`)."""
    turns = dialogue_streams(record).turns
    found = events([t.role for t in turns], [t.start for t in turns], [t.end for t in turns],
                   turn_changes(record))
    pauses_and_backchannels = spans(record)
    kinds, starts, ends = (zip(*pauses_and_backchannels) if pauses_and_backchannels
                           else ((), (), ()))
    return found + span_events(kinds, starts, ends)
