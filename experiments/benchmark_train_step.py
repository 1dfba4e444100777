"""Train-step time of a configuration with each attention backend (XLA, and cuDNN on GPU).

    python experiments/benchmark_train_step.py --config=qwen2_0_5b --batch=4 --seq_len=2048
    python experiments/benchmark_train_step.py --config=qwen2_0_5b --stage=half_duplex

Rows default to the stage plan's (``--stage``, alignment by default): its global batch and row
length; ``--batch`` / ``--seq_len`` override them.

One device, the real train step (loss on packed rows, gradients, AdamW update, donated
state), random parameters and tokens; each step is timed to completion after one compiling
step. Prints ms per step, tokens per second and the model FLOP utilisation estimate
(6 * params * tokens per step; attention FLOPs not counted).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_string("config", "embedded", "a named configuration (experiments/configs)")
flags.DEFINE_string("stage", "alignment", "whose planned batch and row length to time")
flags.DEFINE_integer("batch", None, "rows per step (default: the stage plan's batch)")
flags.DEFINE_integer("seq_len", None, "tokens per row, packed into 4 segments (default: the "
                     "stage plan's row length)")
flags.DEFINE_integer("steps", 10, "timed steps after the compiling one")
flags.DEFINE_list("attention", None, "backends to time (default: xla, plus cudnn on GPU)")
flags.DEFINE_multi_string("set", [], "configuration overrides, e.g. --set=model.remat=false")
FLAGS = flags.FLAGS


def time_steps(cfg, impl: str, batch: int, seq_len: int, steps: int) -> float:
    import jax
    import numpy as np

    from omniflatten_jax.model import Transformer
    from omniflatten_jax.training.optimizer import make_optimizer
    from omniflatten_jax.training.step import train_step

    model = Transformer(dataclasses.replace(cfg.model, attention_impl=impl),
                        cfg.layout.vocab_size)
    tx = make_optimizer(cfg.optimizer, 1000)
    params = model.init(jax.random.key(0))
    opt_state = tx.init(params)
    rng = np.random.default_rng(0)
    seg = seq_len // 4
    rows = {"tokens": rng.integers(0, cfg.layout.vocab_size, (batch, seq_len)).astype(np.int32),
            "positions": np.tile(np.arange(seq_len) % seg, (batch, 1)).astype(np.int32),
            "segment_ids": np.tile(np.arange(seq_len) // seg + 1, (batch, 1)).astype(np.int32),
            "loss_mask": np.ones((batch, seq_len), bool),
            "streams": np.ones((batch, seq_len), np.int32)}
    step = jax.jit(lambda p, o, b: train_step(model, tx, p, o, b), donate_argnums=(0, 1))
    params, opt_state, metrics = step(params, opt_state, rows)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        params, opt_state, metrics = step(params, opt_state, rows)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    from experiments.configs import get_config
    from omniflatten_jax.model import transformer
    from omniflatten_jax.stages import plan_stage

    cfg = get_config(FLAGS.config, FLAGS.set)
    plan = plan_stage(cfg, FLAGS.stage)
    batch, seq_len = FLAGS.batch or plan.train.batch_size, FLAGS.seq_len or plan.train.seq_len
    impls = FLAGS.attention or (["xla", "cudnn"] if jax.default_backend() == "gpu" else ["xla"])
    n_params = transformer(cfg.model, cfg.layout.vocab_size).num_params
    tokens = batch * seq_len
    print(f"{FLAGS.config}: {n_params / 1e6:.1f}M params, {cfg.model.dtype}, remat "
          f"{cfg.model.remat}, batch {batch} x {seq_len} ({plan.name}) on "
          f"{jax.devices()[0].device_kind} [jax {jax.__version__}]")
    for impl in impls:
        seconds = time_steps(cfg, impl, batch, seq_len, FLAGS.steps)
        print(f"  attention {impl:<6} {seconds * 1000:8.1f} ms/step  {tokens / seconds:10.0f} "
              f"tokens/s  {6 * n_params * tokens / seconds / 1e12:7.1f} model TFLOP/s")


if __name__ == "__main__":
    app.run(main)
