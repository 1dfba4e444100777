"""Runs one training stage: fresh start, warm start (`init_from`) or resume, then the loop.

The caller supplies the data (a function that builds the Grain dataset of global batches,
the same on every host) and, optionally, an evaluation function; this module owns the mesh,
the state, the sharded jitted step (`TrainProgram`), logging, preemption and checkpoints.
Every host runs it; process 0 alone writes logs, metrics and TensorBoard, and at each logged
step the hosts prove they trained on the same global batch. Restore precedence, highest first:

1. the stage's own latest checkpoint (a killed or repeated run resumes; it never starts over),
   after checking that the architecture, token layout, speech tokenizer, stage description
   and prepared dataset are unchanged (`checkpoint.check_continues`), on any host count or
   mesh shape (the parameters and optimiser state land in this run's shardings);
2. `init_from` (a checkpoint from `export.from_hf` or the previous stage): params only, with a
   fresh optimiser, after checking every weight, the architecture, the token layout and the
   speech tokenizer;
3. random initialisation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from omniflatten_jax import checkpoint, finite
from omniflatten_jax.checkpoint.checkpointer import TrainCheckpointer
from omniflatten_jax.config import ExperimentConfig
from omniflatten_jax.distributed import accelerators, hosts, paths, sharding
from omniflatten_jax.model.placement import PlacedModel
from omniflatten_jax.stage_plan import StagePlan, train_section
from omniflatten_jax.training import guard as numerics
from omniflatten_jax.training.metrics import MetricsWriter, format_duration
from omniflatten_jax.training.optimizer import learning_rate
from omniflatten_jax.training.preemption import Preempted, PreemptionWatch
from omniflatten_jax.training.program import TrainProgram

log = logging.getLogger(__name__)

DataFactory = Callable[[], Any]  # () -> Grain dataset of global batches
EvalFn = Callable[[PlacedModel, int], dict]  # (placed params, step) -> metrics


@dataclasses.dataclass(frozen=True)
class StageResult:
    placed: PlacedModel  # the final parameters, placed for evaluation (`EvalConfig.params`)
    meta: checkpoint.CheckpointMeta
    step: int
    trained_steps: int  # steps run by this call (0 when the stage was already complete)


def describe(cfg: ExperimentConfig, plan: StagePlan, lineage: tuple,
             speech_tokenizer: bytes | None, data_fingerprint: str | None = None
             ) -> checkpoint.CheckpointMeta:
    """The metadata every checkpoint of this stage carries (`checkpoint.CheckpointMeta`)."""
    return checkpoint.CheckpointMeta(
        cfg.model, cfg.layout, lineage, stage=plan.name, flatten=plan.flatten,
        context_chunks=plan.context_chunks,
        speech_tokenizer_sha256=None if speech_tokenizer is None
        else checkpoint.sha256(speech_tokenizer), data_fingerprint=data_fingerprint)


def _batch_digest(rows: dict[str, np.ndarray]) -> bytes:
    return b"".join(np.ascontiguousarray(rows[k]).tobytes() for k in sorted(rows))


def train_stage(cfg: ExperimentConfig, plan: StagePlan, stage_dir: str, make_data: DataFactory,
                *, init_from: str | None = None, evaluate: EvalFn | None = None,
                speech_tokenizer: bytes | None = None,
                data_fingerprint: str | None = None) -> StageResult:
    """Trains `plan` with `cfg`'s model, layout, optimiser and mesh. `speech_tokenizer`, the
    tokenizer file's bytes, and `data_fingerprint`, the prepared dataset's, are recorded in
    every checkpoint (and must match what it resumes; the tokenizer also what it starts from).
    Raises `Preempted` after saving when the run receives a preemption notice."""
    stage, train = plan.name, plan.train
    loss_names = dict(plan.loss_names)
    mesh = sharding.make_mesh(cfg.mesh)
    program = TrainProgram.build(cfg, train, mesh, f"{train_section(stage)}.batch_size")
    model, rules = program.model, program.rules
    lr = learning_rate(cfg.optimizer, train.steps)
    ckpt = TrainCheckpointer(paths.join(stage_dir, "checkpoints"), train.keep_checkpoints,
                             speech_tokenizer)
    ours = describe(cfg, plan, (), speech_tokenizer, data_fingerprint)

    def placed(params) -> PlacedModel:
        return PlacedModel(model, params, mesh, rules, cfg.eval.params)

    latest = ckpt.latest_step()
    if latest is not None:
        # Checked before restoring: a changed architecture must be named, not fail (or,
        # for rope_theta, succeed) deep inside Orbax.
        where = paths.join(ckpt.directory, str(latest))
        checkpoint.check_continues(checkpoint.load_meta(where), ours, where,
                                   same_stage=True)
    if latest is not None and latest >= train.steps:
        ckpt.close()
        log.info("%s is complete: its checkpoint is at step %d of %d; nothing to train "
                 "(delete %s to train it again)", stage, latest, train.steps, stage_dir)
        params, meta, _ = checkpoint.load_params(where, program.param_shardings, cfg.layout)
        return StageResult(placed(params), meta, latest, 0)

    ckpt.check_space(program.abstract_params, program.abstract_opt_state)
    data_iter = iter(make_data())
    if latest is not None:
        params, opt_state, restored = ckpt.restore(
            latest, program.abstract_params, program.abstract_opt_state, data_iter)
        # Rewritten from the plan: a checkpoint from before stage descriptions gains one.
        meta = describe(cfg, plan, restored.lineage, speech_tokenizer, data_fingerprint)
        start = latest
        log.info("%s: resuming from step %d (%s) on %d processes, mesh %s", stage, latest,
                 where, jax.process_count(), dict(mesh.shape))
    else:
        if init_from:
            source = checkpoint.load_meta(init_from)
            checkpoint.check_continues(source, ours, init_from, same_stage=False)
            params, source_meta, where = checkpoint.load_params(
                init_from, program.param_shardings, cfg.layout)
            lineage = source_meta.lineage + ({"kind": "init_from", "path": where},)
            log.info("%s: initialised from %s (params only, fresh optimiser)", stage, where)
        else:
            params = program.init_params(train.seed)
            lineage = ({"kind": "random_init", "seed": train.seed},)
        opt_state = program.init_opt_state(params)
        meta = describe(cfg, plan, lineage + (
            {"kind": "train", "stage": stage, "steps": train.steps},), speech_tokenizer,
            data_fingerprint)
        start = 0
        log.info("%s: training %s parameters for %d steps, batch %d x %d tokens, mesh %s, "
                 "%d processes", stage, f"{model.num_params:,}", train.steps,
                 train.batch_size, train.seq_len, dict(mesh.shape), jax.process_count())

    # Rates and ETA are measured from the end of the first step (which includes compiling).
    tokens_seen, first_done, skipped = 0, None, 0
    flops_per_token = accelerators.train_flops_per_token(
        model.num_params, cfg.layout.vocab_size, cfg.model, train.seq_len)
    guard = program.init_guard(start)

    def check_numerics() -> None:  # where the host syncs anyway: logged steps, saves
        nonlocal skipped
        now_skipped = numerics.check(guard, train, stage, ckpt.directory)
        if now_skipped > skipped:
            log.warning("%s: %d steps so far had a non-finite loss or gradient and were "
                        "skipped (train.on_nonfinite=skip, at most %d)", stage,
                        now_skipped, train.max_skipped_steps)
        skipped = now_skipped

    # Ctrl-C and SIGTERM act at step boundaries from before the first file a run writes.
    with PreemptionWatch() as preemption:
        writer = MetricsWriter(stage_dir, enabled=hosts.is_primary(), resumed_from=start)
        try:
            for step in range(start + 1, train.steps + 1):
                rows = next(data_iter)
                if first_done is not None:
                    tokens_seen += int(np.sum(rows["segment_ids"] > 0))
                params, opt_state, guard, metrics = program.step(
                    params, opt_state, guard, program.global_batch(rows))
                if step % train.log_every == 0 or step == train.steps or step == start + 1:
                    hosts.agree(f"the global batch of step {step}", _batch_digest(rows),
                                "the hosts read different data (WORKSPACE.md: Several hosts)")
                    metrics = jax.device_get(metrics)
                    now = time.perf_counter()
                    if first_done is None:
                        first_done, rate, per_step = (now, step), None, None
                    else:
                        elapsed = now - first_done[0]
                        rate = tokens_seen / elapsed
                        per_step = elapsed / (step - first_done[1])
                    speed = None if rate is None else accelerators.utilisation(
                        rate, flops_per_token, jax.devices()[0].device_kind,
                        jax.device_count())
                    _log_step(stage, step, train.steps, metrics, lr(step - 1), rate,
                              per_step, loss_names, writer, speed)
                    check_numerics()
                    ckpt.check_for_errors()
                # At the final step the save below is the last one anyway: finish normally.
                preempted = preemption.reached(step) and step < train.steps
                if step % train.checkpoint_every == 0 or step == train.steps or preempted:
                    check_numerics()
                    # Never written from non-finite weights (a belt to the guard's braces).
                    finite.check_finite(params, f"{stage} at step {step}",
                                        "Nothing was saved; lower optimizer.peak_lr.")
                    state = data_iter.get_state()
                    hosts.agree(f"the data position at step {step}",
                                json.dumps(state, sort_keys=True))
                    ckpt.save(step, params, opt_state, state, meta)
                if preempted:
                    ckpt.wait()
                    raise Preempted(stage, step, ckpt.directory)
                if evaluate and train.eval_every and step % train.eval_every == 0 \
                        and step != train.steps:
                    writer.write(step, {f"eval/{k}": v for k, v in
                                        evaluate(placed(params), step).items()
                                        if isinstance(v, (int, float))})
            ckpt.wait()
            log.info("%s: saved step %d to %s", stage, train.steps, ckpt.directory)
        finally:
            writer.close()
            ckpt.close()
            if hasattr(data_iter, "close"):
                data_iter.close()
    return StageResult(placed(params), meta, train.steps, train.steps - start)


def _log_step(stage, step, total, metrics, lr_value, tokens_per_s, seconds_per_step,
              loss_names, writer, utilisation: dict | None = None) -> None:
    values = {"loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"]),
              "lr": float(lr_value)}
    if tokens_per_s is not None:
        values["tokens_per_s"] = tokens_per_s
        values.update(utilisation or {})
    for key, (total_loss, count) in metrics["per_stream"].items():
        if count > 0 and key in loss_names:
            values[f"loss/{loss_names[key]}"] = float(total_loss / count)
    writer.write(step, values)
    streams = "  ".join(f"{k[5:]} {v:.3f}" for k, v in values.items() if k.startswith("loss/"))
    per_chip = (f" ({values['tokens_per_s_per_chip']:.0f}/chip"
                + (f", MFU {100 * values['mfu']:.1f}%" if "mfu" in values else "") + ")"
                if "tokens_per_s_per_chip" in values else "")
    speed = ("compiled" if tokens_per_s is None else
             f"{tokens_per_s:.0f} tok/s{per_chip}  "
             f"ETA {format_duration(seconds_per_step * (total - step))}")
    log.info("%s step %d/%d  loss %.3f  %s  grad %.2f  lr %.2e  %s", stage, step, total,
             values["loss"], streams, values["grad_norm"], values["lr"], speed)
