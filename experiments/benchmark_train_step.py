"""Train-step time of a configuration with each attention backend (XLA, plus the platform's
kernels: splash on TPU, the Pallas GPU kernel and cuDNN on GPU).

    python experiments/benchmark_train_step.py --config=qwen2_0_5b --batch=4 --seq_len=2048
    python experiments/benchmark_train_step.py --config=qwen2_0_5b --stage=half_duplex

Rows default to the stage plan's (``--stage``, alignment by default): its global batch and row
length; ``--batch`` / ``--seq_len`` override them.

One device, the trainer's own step (`TrainProgram`: loss on packed rows, gradients, AdamW
update, numerics guard, donated state), random parameters and tokens; each step is timed to
completion after the compiling ones. Prints ms per step, tokens per second, model TFLOP/s and
MFU (`accelerators.train_flops_per_token`, on chips with a known peak). To compare with
PyTorch in the same run: `benchmark_vs_torch.py`.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402  (after the path: run as a script)

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("config", "embedded", "a named configuration (experiments/configs)")
    flags.DEFINE_string("stage", "alignment", "whose planned batch and row length to time")
    flags.DEFINE_integer("batch", None, "rows per step (default: the stage plan's batch)")
    flags.DEFINE_integer("seq_len", None, "tokens per row, packed into 4 segments (default: the "
                         "stage plan's row length)")
    flags.DEFINE_integer("steps", 10, "timed steps after the compiling ones")
    flags.DEFINE_integer("warmup", 2, "untimed steps (compilation)")
    flags.DEFINE_list("attention", None, "backends to time (default: xla, plus splash on TPU, "
                      "pallas_gpu and cudnn on GPU)")
    flags.DEFINE_multi_string("set", [], "configuration overrides, e.g. --set=model.remat=none")


def main() -> None:
    import jax

    from experiments.configs import get_config
    from experiments.step_timing import packed_rows, time_train_program
    from omniflatten_jax.distributed import accelerators
    from omniflatten_jax.model import transformer
    from omniflatten_jax.stage_plan import plan_stage

    cfg = get_config(FLAGS.config, FLAGS.set)
    plan = plan_stage(cfg, FLAGS.stage)
    batch, seq_len = FLAGS.batch or plan.train.batch_size, FLAGS.seq_len or plan.train.seq_len
    platform = jax.default_backend()
    impls = FLAGS.attention or ["xla"] + {"tpu": ["splash"], "gpu": ["pallas_gpu", "cudnn"]}.get(
        platform, [])
    model = transformer(cfg.model, cfg.layout.vocab_size)
    kind = jax.devices()[0].device_kind
    flops = accelerators.train_flops_per_token(model.num_params, model.vocab_size, cfg.model,
                                               seq_len)
    tokens = batch * seq_len
    rows = packed_rows(cfg.layout.vocab_size, batch, seq_len, 4)
    print(f"{FLAGS.config}: {model.num_params / 1e6:.1f}M params, {cfg.model.dtype}, remat "
          f"{cfg.model.remat}, scan_layers {cfg.model.scan_layers}, loss_chunk "
          f"{cfg.model.loss_chunk}, batch {batch} x {seq_len} ({plan.name}) on {kind} "
          f"[jax {jax.__version__}]")
    for impl in impls:
        with_impl = dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, attention_impl=impl))
        seconds, _, _ = time_train_program(with_impl, rows, FLAGS.warmup, FLAGS.steps)
        use = accelerators.utilisation(tokens / seconds, flops, kind, 1)
        mfu = f"{use['mfu']:6.1%}" if "mfu" in use else "   n/a"
        print(f"  attention {impl:<10} {seconds * 1000:8.1f} ms/step  {tokens / seconds:10.0f} "
              f"tokens/s  {tokens / seconds * flops / 1e12:7.1f} model TFLOP/s  MFU {mfu}")


if __name__ == "__main__":
    cli.run(main, define_flags)
