"""Our train step against Hugging Face transformers + PyTorch: same device, model, rows, run.

    python experiments/benchmark_vs_torch.py            # GPU: qwen2_0_5b, 8 x 4096 packed
    python experiments/benchmark_vs_torch.py --config=embedded --batch=2 --seq_len=256   # CPU

Both sides train the same model from the same weights (ours, converted by the Hugging Face
weight map) on the same packed rows (``--segments`` sequences per row, positions restarting
in each):

- ours: the trainer's `TrainProgram` step (packed attention kernel, loss over chunks when the
  configuration says so, numerics guard), remat policy ``--remat`` (default none: theirs does
  no gradient checkpointing), on a one-device mesh;
- theirs: transformers' model of the family (``Qwen2ForCausalLM``, ``Qwen3ForCausalLM``) in
  fp32 master weights under bf16 autocast (on GPU; fp32 on CPU, where autocast would time bf16
  emulation), ``torch.compile`` of the model, attention ``--torch_attention`` (sdpa by
  default: transformers turns restarting ``position_ids`` into a block-causal mask for packed
  rows, without a KV cache).

Both use AdamW with the configuration's betas, weight decay on matrices only and gradient
clipping (theirs fused); the learning rate is held at its peak on their side (a schedule does
not change the time of a step). Each side runs in its own process, one after the other, so
neither holds device memory while the other is timed (JAX keeps 75% of a GPU once started);
our process hands the initial weights to theirs as an ``.npz`` of Hugging Face tensors.

Each side runs ``--warmup`` untimed steps (compilation) then ``--steps`` timed steps, each to
completion. Printed: ms per step, tokens per second, model TFLOP/s and MFU (on chips with a
known peak; `accelerators.train_flops_per_token`, which counts attention over whole rows, as
if each held one sequence: packed rows do less attention work, so both sides' MFU is
overstated alike), the first-step loss of each side (the same model on the same rows: they
agree to the compute dtype's precision) and the ratio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402  (after the path: run as a script)

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("config", None, "a named configuration (default: qwen2_0_5b on an "
                        "accelerator, embedded on CPU)")
    flags.DEFINE_integer("batch", None, "rows per step (default: 8 on an accelerator, 2 on CPU)")
    flags.DEFINE_integer("seq_len", None, "tokens per row (default: 4096 on an accelerator, 256 "
                         "on CPU)")
    flags.DEFINE_integer("segments", 4, "packed sequences per row")
    flags.DEFINE_integer("steps", 10, "timed steps per side")
    flags.DEFINE_integer("warmup", 2, "untimed steps per side (compilation)")
    flags.DEFINE_string("torch_attention", "sdpa", "transformers attn_implementation: sdpa, eager, "
                        "flex_attention, flash_attention_2 (if installed)")
    flags.DEFINE_bool("torch_compile", True, "torch.compile the transformers model")
    flags.DEFINE_string("remat", "none", "our remat policy (theirs checkpoints nothing)")
    flags.DEFINE_multi_string("set", [], "configuration overrides of our side, e.g. "
                              "--set=model.attention_impl=cudnn")
    flags.DEFINE_enum("side", "both", ["both", "ours", "torch"], "internal: run one side in this "
                      "process and print its figures as JSON")
    flags.DEFINE_string("weights", None, "internal: the .npz of initial weights the sides share")


def run_torch(cfg, tensors: dict, rows, warmup: int, steps: int, attention: str,
              compile_: bool):
    """(seconds per step, first-step loss) of transformers' model of the config's family
    (`Qwen2ForCausalLM`, `Qwen3ForCausalLM`) from Hugging Face `tensors`."""
    import torch
    import transformers

    from omniflatten_jax.export.hf_config import model_config_to_hf

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf = model_config_to_hf(cfg.model, cfg.layout, "float32")
    hf["vocab_size"] = cfg.layout.vocab_size  # the same (padded) output layer as ours
    config = transformers.AutoConfig.for_model(hf.pop("model_type"), **hf)
    config._attn_implementation = attention
    model = transformers.AutoModelForCausalLM.from_config(config)
    state = {name: torch.from_numpy(np.array(value)) for name, value in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise RuntimeError(f"weight map mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.to(device).train()
    opt = cfg.optimizer
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    others = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": opt.weight_decay},
                                   {"params": others, "weight_decay": 0.0}],
                                  lr=opt.peak_lr, betas=(opt.b1, opt.b2), fused=True)
    tokens = torch.from_numpy(rows["tokens"].astype(np.int64)).to(device)
    positions = torch.from_numpy(rows["positions"].astype(np.int64)).to(device)
    # transformers shifts labels itself: label t is the target of position t - 1; a segment's
    # first token is nobody's target (the same pairs our loss counts).
    labels = tokens.masked_fill(positions == 0, -100)
    forward = torch.compile(model) if compile_ else model
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step():
        # use_cache=False: with a cache transformers ignores restarting position_ids and lets
        # the packed segments attend to each other.
        with autocast:
            loss = forward(input_ids=tokens, position_ids=positions, labels=labels,
                           use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opt.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    first = float(step().detach())
    for _ in range(warmup - 1):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps, first


def hf_tensors(cfg, params) -> dict:
    """Our parameter tree as Hugging Face tensors (numpy, every vocabulary row)."""
    from omniflatten_jax.export import weight_map

    return {name: np.asarray(weight_map.to_hf(np.asarray(weight_map.get_path(params, path)),
                                              transform))
            for name, path, transform in weight_map.tensor_map(cfg.model)}


def one_side(cfg, rows) -> dict:
    """This process's side (``--side``): its figures, for the parent to print."""
    if FLAGS.side == "ours":
        from experiments.step_timing import time_train_program

        seconds, loss, params = time_train_program(cfg, rows, FLAGS.warmup, FLAGS.steps)
        np.savez(FLAGS.weights, **hf_tensors(cfg, params))
        return {"seconds": seconds, "loss": loss}
    with np.load(FLAGS.weights) as saved:
        tensors = {name: saved[name] for name in saved.files}
    seconds, loss = run_torch(cfg, tensors, rows, FLAGS.warmup, FLAGS.steps,
                              FLAGS.torch_attention, FLAGS.torch_compile)
    return {"seconds": seconds, "loss": loss}


def run_side(side: str, weights: str, resolved: list[str]) -> dict:
    """One side in a child process, with every flag of this one and the `resolved` defaults.
    The torch side's JAX (configuration only) stays on CPU, off the device being timed."""
    argv = [a for a in sys.argv[1:] if not a.startswith(("--side", "--weights"))]
    env = dict(os.environ, **({"JAX_PLATFORMS": "cpu"} if side == "torch" else {}))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, *resolved,
                           f"--side={side}", f"--weights={weights}"],
                          capture_output=True, text=True, env=env)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode or not lines:
        sys.exit(f"error: the {side} side failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    import jax

    from experiments.configs import get_config
    from experiments.step_timing import packed_rows
    from omniflatten_jax.distributed import accelerators
    from omniflatten_jax.model import transformer

    if FLAGS.side == "both":  # the parent only reads the device kind: keep it off the GPU
        jax.config.update("jax_platforms", "cpu")
        kind_probe = subprocess.run(
            [sys.executable, "-c", "import jax; print(jax.devices()[0].device_kind)"],
            capture_output=True, text=True)
        kind = (kind_probe.stdout.strip().splitlines() or ["cpu"])[-1]
        accelerated = kind.lower() != "cpu"
    else:
        kind = jax.devices()[0].device_kind
        accelerated = jax.default_backend() != "cpu"
    cfg = get_config(FLAGS.config or ("qwen2_0_5b" if accelerated else "embedded"),
                     [f"model.remat={FLAGS.remat}", *FLAGS.set])
    batch = FLAGS.batch or (8 if accelerated else 2)
    seq_len = FLAGS.seq_len or (4096 if accelerated else 256)
    rows = packed_rows(cfg.layout.vocab_size, batch, seq_len, FLAGS.segments)
    if FLAGS.side != "both":
        print(json.dumps(one_side(cfg, rows)))
        return
    import torch

    model = transformer(cfg.model, cfg.layout.vocab_size)
    flops = accelerators.train_flops_per_token(model.num_params, model.vocab_size, cfg.model,
                                               seq_len)
    gpu = torch.cuda.is_available()
    print(f"{cfg.name}: {model.num_params / 1e6:.1f}M params, vocabulary "
          f"{cfg.layout.vocab_size:,}, {batch} x {seq_len} tokens in {FLAGS.segments} packed "
          f"segments per row, on {kind} [jax {jax.__version__}, torch {torch.__version__}]")
    print(f"  ours:   {cfg.model.dtype} compute, attention {cfg.model.attention_impl}, remat "
          f"{cfg.model.remat}, scan_layers {cfg.model.scan_layers}, loss_chunk "
          f"{cfg.model.loss_chunk}")
    print(f"  theirs: transformers {cfg.model.family} model, attention {FLAGS.torch_attention}, "
          f"torch.compile {FLAGS.torch_compile}, fused AdamW, "
          f"{'bf16 autocast' if gpu else 'fp32'}")
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "weights.npz")
        resolved = [f"--config={cfg.name}", f"--batch={batch}", f"--seq_len={seq_len}"]
        ours = run_side("ours", weights, resolved)
        theirs = run_side("torch", weights, resolved)
    tokens = batch * seq_len
    for name, side in (("ours", ours), ("torch", theirs)):
        per_s = tokens / side["seconds"]
        use = accelerators.utilisation(per_s, flops, kind, 1)
        mfu = f"{use['mfu']:6.1%}" if "mfu" in use else "   n/a"
        print(f"  {name:<6} {side['seconds'] * 1e3:9.1f} ms/step  {per_s:10.0f} tokens/s  "
              f"{per_s * flops / 1e12:7.2f} model TFLOP/s  MFU {mfu}  "
              f"first loss {side['loss']:.4f}")
    print(f"  ratio (ours / torch tokens/s): {theirs['seconds'] / ours['seconds']:.2f}x")


if __name__ == "__main__":
    cli.run(main, define_flags)
