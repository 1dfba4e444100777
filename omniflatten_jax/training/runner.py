"""Runs one training stage: fresh start, warm start (`init_from`) or resume, then the loop.

The caller supplies the data (a function that builds this host's Grain dataset of local
batches) and, optionally, an evaluation function; this module owns the mesh, the state, the
sharded jitted step, logging and checkpoints. Restore precedence, highest first:

1. the stage's own latest checkpoint (a killed or repeated run resumes; it never starts over),
   after checking that the architecture, token layout, speech tokenizer and stage
   description are unchanged (`checkpoint.check_continues`);
2. `init_from` (a checkpoint from `export.from_hf` or the previous stage): params only, with a
   fresh optimiser, after checking every weight, the architecture, the token layout and the
   speech tokenizer;
3. random initialisation.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from omniflatten_jax import checkpoint, sharding
from omniflatten_jax.batch import FIELDS
from omniflatten_jax.config import ExperimentConfig
from omniflatten_jax.model import transformer
from omniflatten_jax.placement import PlacedModel
from omniflatten_jax.stages import StagePlan
from omniflatten_jax.training.metrics import MetricsWriter, format_duration
from omniflatten_jax.training.optimizer import learning_rate, make_optimizer
from omniflatten_jax.training.step import train_step

log = logging.getLogger(__name__)

DataFactory = Callable[[int, int], Any]  # (process_index, process_count) -> Grain dataset
EvalFn = Callable[[PlacedModel, int], dict]  # (placed params, step) -> metrics


@dataclasses.dataclass(frozen=True)
class StageResult:
    placed: PlacedModel  # the final parameters, placed for evaluation (`EvalConfig.params`)
    meta: checkpoint.CheckpointMeta
    step: int
    trained_steps: int  # steps run by this call (0 when the stage was already complete)


def _global_batch(local: dict[str, np.ndarray], shardings) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in local.items()}


def describe(cfg: ExperimentConfig, plan: StagePlan, lineage: tuple,
             speech_tokenizer: bytes | None) -> checkpoint.CheckpointMeta:
    """The metadata every checkpoint of this stage carries (`checkpoint.CheckpointMeta`)."""
    return checkpoint.CheckpointMeta(
        cfg.model, cfg.layout, lineage, stage=plan.name, flatten=plan.flatten,
        context_chunks=plan.context_chunks,
        speech_tokenizer_sha256=None if speech_tokenizer is None
        else checkpoint.sha256(speech_tokenizer))


def train_stage(cfg: ExperimentConfig, plan: StagePlan, stage_dir: str, make_data: DataFactory,
                *, init_from: str | None = None, evaluate: EvalFn | None = None,
                speech_tokenizer: bytes | None = None) -> StageResult:
    """Trains `plan` with `cfg`'s model, layout, optimiser and mesh. `speech_tokenizer`, the
    tokenizer file's bytes, is stored in every checkpoint (and must match what it resumes or
    starts from)."""
    stage, train = plan.name, plan.train
    loss_names = dict(plan.loss_names)
    if train.batch_size % jax.process_count():
        raise ValueError(f"{stage}: batch_size={train.batch_size} must divide over "
                         f"{jax.process_count()} hosts")
    mesh = sharding.make_mesh(cfg.mesh)
    rules = cfg.mesh.rules
    model = transformer(cfg.model, cfg.layout.vocab_size)
    tx = make_optimizer(cfg.optimizer, train.steps)
    lr = learning_rate(cfg.optimizer, train.steps)
    ckpt = checkpoint.TrainCheckpointer(os.path.join(stage_dir, "checkpoints"),
                                        train.keep_checkpoints, speech_tokenizer)
    shape = (train.batch_size, train.seq_len)
    ours = describe(cfg, plan, (), speech_tokenizer)

    def placed(params) -> PlacedModel:
        return PlacedModel(model, params, mesh, rules, cfg.eval.params)

    with sharding.activate(mesh, rules):
        p_shard = model.param_shardings(mesh, rules)
        abstract_params = checkpoint.abstract_like(model.abstract_params, p_shard)
        o_shard = jax.jit(tx.init).lower(abstract_params).compile().output_shardings
        abstract_opt = checkpoint.abstract_like(jax.eval_shape(tx.init, abstract_params), o_shard)
        b_shard = {k: sharding.batch_sharding(mesh, rules, shape) for k in FIELDS}

        latest = ckpt.latest_step()
        if latest is not None:
            # Checked before restoring: a changed architecture must be named, not fail (or,
            # for rope_theta, succeed) deep inside Orbax.
            where = os.path.join(ckpt.directory, str(latest))
            checkpoint.check_continues(checkpoint.load_meta(where), ours, where,
                                       same_stage=True)
        if latest is not None and latest >= train.steps:
            ckpt.close()
            log.info("%s is complete: its checkpoint is at step %d of %d; nothing to train "
                     "(delete %s to train it again)", stage, latest, train.steps, stage_dir)
            params, meta, _ = checkpoint.load_params(where, p_shard, cfg.layout)
            return StageResult(placed(params), meta, latest, 0)

        data = make_data(jax.process_index(), jax.process_count())
        data_iter = iter(data)
        if latest is not None:
            params, opt_state, restored = ckpt.restore(latest, abstract_params, abstract_opt,
                                                       data_iter)
            # Rewritten from the plan: a checkpoint from before stage descriptions gains one.
            meta = describe(cfg, plan, restored.lineage, speech_tokenizer)
            start = latest
            log.info("%s: resuming from step %d (%s)", stage, latest, where)
        else:
            if init_from:
                source = checkpoint.load_meta(init_from)
                checkpoint.check_continues(source, ours, init_from, same_stage=False)
                params, source_meta, where = checkpoint.load_params(init_from, p_shard,
                                                                    cfg.layout)
                lineage = source_meta.lineage + ({"kind": "init_from", "path": where},)
                log.info("%s: initialised from %s (params only, fresh optimiser)", stage, where)
            else:
                params = model.init(jax.random.key(train.seed), mesh, rules)
                lineage = ({"kind": "random_init", "seed": train.seed},)
            opt_state = jax.jit(tx.init, out_shardings=o_shard)(params)
            meta = describe(cfg, plan, lineage + (
                {"kind": "train", "stage": stage, "steps": train.steps},), speech_tokenizer)
            start = 0
            log.info("%s: training %s parameters for %d steps, batch %d x %d tokens, mesh %s",
                     stage, f"{model.num_params:,}", train.steps, train.batch_size,
                     train.seq_len, dict(mesh.shape))

        step_fn = jax.jit(functools.partial(train_step, model, tx),
                          in_shardings=(p_shard, o_shard, b_shard),
                          out_shardings=(p_shard, o_shard, None), donate_argnums=(0, 1))
        writer = MetricsWriter(stage_dir)
        # Rates and ETA are measured from the end of the first step (which includes compiling).
        tokens_seen, first_done = 0, None
        try:
            for step in range(start + 1, train.steps + 1):
                local = next(data_iter)
                if first_done is not None:
                    tokens_seen += int(np.sum(local["segment_ids"] > 0)) * jax.process_count()
                params, opt_state, metrics = step_fn(params, opt_state,
                                                     _global_batch(local, b_shard))
                if step % train.log_every == 0 or step == train.steps or step == start + 1:
                    metrics = jax.device_get(metrics)
                    now = time.perf_counter()
                    if first_done is None:
                        first_done, rate, per_step = (now, step), None, None
                    else:
                        elapsed = now - first_done[0]
                        rate = tokens_seen / elapsed
                        per_step = elapsed / (step - first_done[1])
                    _log_step(stage, step, train.steps, metrics, lr(step - 1), rate, per_step,
                              loss_names, writer)
                if step % train.checkpoint_every == 0 or step == train.steps:
                    ckpt.save(step, params, opt_state, data_iter, meta)
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
              loss_names, writer) -> None:
    values = {"loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"]),
              "lr": float(lr_value)}
    if tokens_per_s is not None:
        values["tokens_per_s"] = tokens_per_s
    for key, (total_loss, count) in metrics["per_stream"].items():
        if count > 0 and key in loss_names:
            values[f"loss/{loss_names[key]}"] = float(total_loss / count)
    writer.write(step, values)
    streams = "  ".join(f"{k[5:]} {v:.3f}" for k, v in values.items() if k.startswith("loss/"))
    speed = ("compiled" if tokens_per_s is None else
             f"{tokens_per_s:.0f} tok/s  ETA {format_duration(seconds_per_step * (total - step))}")
    log.info("%s step %d/%d  loss %.3f  %s  grad %.2f  lr %.2e  %s", stage, step, total,
             values["loss"], streams, values["grad_norm"], values["lr"], speed)
