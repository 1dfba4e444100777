"""Pre-flight plan: compile the real train step for a TPU topology on a CPU host.

``python experiments/plan.py --config=qwen2_7b --topology=v5p-64 [--stage=alignment]
[--per_chip_batch=8] [--seq_len=1024] [--slices=2] [--set=section.field=value ...] [--json]``

Why: a pod is expensive to wait for and a run that dies of RESOURCE_EXHAUSTED at step 0 wastes
the wait (README, "Several hosts": memory is planned before launch). libtpu can make compile-only
devices of any TPU topology on a machine that has no TPU, so this compiles the very step the
trainer runs (`training.program.TrainProgram`: the same shardings, remat, dtype and
optimiser) and reads the compiler's per-chip memory; an HBM overflow is the compiler's own
RESOURCE_EXHAUSTED, reported as "does not fit".

Printed per chip: parameter and optimiser-state bytes (sums over leaves of each device's shard,
from the decided shardings), batch bytes, the compiler's temporaries and total
(argument + output - aliased + temporaries + code), the chip's usable HBM and whether the step
fits; model FLOPs of a step (`accelerators.train_flops_per_token`: 6 N_matmul + 6 L T H d per
token) in all and per chip, and the step time at peak bf16 FLOP/s. Then the largest per-chip
batch that fits, estimated and verified: per-chip memory is fitted as affine in the per-chip
batch from two compiles, the prediction is compiled, and when it does not fit the compiler's
overflow steps it down (then a bisection, within ``--max_compiles``). Memory grows a little
faster than affine at large batches (qwen2_7b, v5p-64: 8 and 4 rows predict 80.6 GiB at 17,
which needs 86.9), so only a compiled batch counts. Each compile runs in a child process
(libtpu 0.0.42 segfaults on some large steps: reported as a crash, never a lost plan) and
takes minutes for a Qwen2 step on two cores.

``--slices=N`` plans N slices joined by the data-centre network (`mesh.slices`: the data axis
spans the slices). ``--per_chip_batch`` sets the stage's global batch to that times the chips
of all slices; without it the configuration's batch is planned as shipped. Topology names and
installing libtpu: `experiments/tpu_topology.py`.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import cli  # noqa: E402  (after the path: run as a script)
from experiments.tpu_topology import (  # noqa: E402
    LIBTPU_DIR,
    Topology,
    libtpu_path,
    parse_topology,
    tpu_devices,
    use_libtpu,
)

# --- one compile, in a child process --------------------------------------------------------

def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded abstract arrays (its shard of each leaf)."""
    import jax

    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))


def stage_config(config: str, topology: Topology, stage: str, per_chip_batch: int | None,
                 seq_len: int | None, overrides=()):
    """The configuration planned: overrides, then the topology's slices, batch and row length."""
    from experiments.configs import get_config
    from omniflatten_jax import stage_plan

    section = stage_plan.train_section(stage)
    extra = [f"mesh.slices={topology.slices}"]
    if per_chip_batch is not None:
        extra.append(f"{section}.batch_size={per_chip_batch * topology.chips}")
    if seq_len is not None:
        extra.append(f"{section}.seq_len={seq_len}")
    cfg = get_config(config, list(overrides) + extra)
    return cfg, stage_plan.plan_stage(cfg, stage), section


def compile_one(config: str, topology: Topology, stage: str, per_chip_batch: int,
                seq_len: int | None, overrides=(), emit=print) -> None:
    """Compiles the stage's train step once and `emit`s two JSON lines: what the shardings
    say (before compiling), then the compiler's memory (after). JAX loads here."""
    use_libtpu(topology)
    from omniflatten_jax.distributed import accelerators, sharding
    from omniflatten_jax.model import packed_attention
    from omniflatten_jax.training.program import TrainProgram

    cfg, stage_plan, section = stage_config(config, topology, stage, per_chip_batch, seq_len,
                                            overrides)
    devices = tpu_devices(topology)
    mesh = sharding.make_mesh(cfg.mesh, devices=devices)
    program = TrainProgram.build(cfg, stage_plan.train, mesh, setting=f"{section}.batch_size")
    model = program.model
    emit(json.dumps({
        "device_kind": devices[0].device_kind, "mesh": dict(mesh.shape),
        "global_batch": program.batch_shape[0], "seq_len": program.batch_shape[1],
        "num_params": model.num_params,
        "flops_per_token": accelerators.train_flops_per_token(
            model.num_params, model.vocab_size, model.cfg, program.batch_shape[1]),
        "params": shard_bytes(program.abstract_params),
        "opt_state": shard_bytes(program.abstract_opt_state),
        "batch": shard_bytes(program.abstract_batch)}))
    start = time.perf_counter()
    try:
        lowered = program.lower()
        # Pallas TPU kernels lower to Mosaic custom calls: the proof the attention kernel (not
        # a dense mask) is what was compiled.
        kernels = lowered.as_text().count("tpu_custom_call")
        mem = lowered.compile().memory_analysis()
    except Exception as e:  # noqa: BLE001 (JaxRuntimeError; only an HBM overflow is expected)
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        emit(json.dumps({"compiled": False, "error": str(e).strip().splitlines()[0],
                         "seconds": time.perf_counter() - start}))
        return
    bytes_ = {"temp": mem.temp_size_in_bytes, "argument": mem.argument_size_in_bytes,
              "output": mem.output_size_in_bytes, "alias": mem.alias_size_in_bytes,
              "code": mem.generated_code_size_in_bytes}
    bytes_["total"] = (bytes_["argument"] + bytes_["output"] - bytes_["alias"] + bytes_["temp"]
                       + bytes_["code"])
    emit(json.dumps({"compiled": True, "error": None, "seconds": time.perf_counter() - start,
                     "attention": packed_attention.resolve(cfg.model.attention_impl,
                                                           cfg.model.dtype, True, "tpu"),
                     "pallas_calls": kernels, **bytes_}))


# --- the parent: compiles in children, the batch search, the report ------------------------

def compile_in_child(config: str, topology: Topology, stage: str, per_chip_batch: int,
                     seq_len: int | None, overrides=()) -> dict:
    """`compile_one` in a fresh process: libtpu 0.0.42 segfaults compiling some large steps
    (seen on the shrunk model, v5e-4, 24 to 39 rows x 4096 tokens, where 20 fit and 40 is a
    clean RESOURCE_EXHAUSTED), and a crash must not take the plan with it.

    A step fits when it compiles and its memory_analysis total is within the chip's usable
    HBM: the compiler's own check counts less (qwen2_0_5b on v5p-64 compiles at 60 rows per
    chip with a total of 98.7 GiB of 95.74), and the runtime allocates the total. ``overflow``
    is the bytes over the limit, when known."""
    import signal
    import subprocess

    from omniflatten_jax.distributed import accelerators

    cmd = [sys.executable, os.path.abspath(__file__), "--one", f"--config={config}",
           f"--topology={topology.name}", f"--slices={topology.slices}", f"--stage={stage}",
           f"--per_chip_batch={per_chip_batch}", *[f"--set={a}" for a in overrides]]
    if seq_len is not None:
        cmd.append(f"--seq_len={seq_len}")
    print(f"compiling {stage} at {per_chip_batch} rows per chip...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode > 0 or not lines:
        sys.exit(f"error: compiling {per_chip_batch} rows per chip failed:\n"
                 f"{proc.stderr[-4000:]}")
    out = {"per_chip_batch": per_chip_batch, **lines[0], "crashed": proc.returncode < 0,
           "wall_seconds": time.perf_counter() - start}
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        out.update(compiled=False, error=f"libtpu crashed ({name}) compiling this step",
                   seconds=out["wall_seconds"])
    else:
        out.update(lines[1])
    out.setdefault("total", None)
    hbm = accelerators.chip(out["device_kind"]).hbm_bytes
    out["fits"] = out["compiled"] and out["total"] <= hbm
    out["overflow"] = _overflow(out["error"] or "")
    if out["compiled"] and not out["fits"]:
        out.update(overflow=out["total"] - hbm,
                   error=f"compiles, but needs {_gib(out['total'])} of {_gib(hbm)}")
    print(f"  {'fits' if out['fits'] else 'does not fit'}: {_gib(out['total'])} per chip, "
          f"compiled in {out['seconds']:.0f} s" + ("" if out["fits"] else f" ({out['error']})"),
          file=sys.stderr, flush=True)
    return out


def largest_batch(measure, results: dict[int, dict], start: int, hbm: int,
                  max_compiles: int) -> dict:
    """The largest per-chip batch that fits. Per-chip bytes are fitted as affine in the batch
    from two fitting compiles (`start` and half of it, or 2 when `start` is 1; halving first
    while `start` does not fit), the prediction is compiled, stepping down while it does not
    fit. `measure(b)` compiles b rows per chip; `results` holds those already compiled."""
    def get(b):
        if b not in results:
            results[b] = measure(b)
        return results[b]

    def budget():
        return len(results) < max_compiles

    b = start
    while not get(b)["fits"] and b > 1 and budget():
        b //= 2
    if not get(b)["fits"]:
        return {"per_chip_batch": 0 if b == 1 else None, "verified": b == 1,
                "method": "not even 1 row per chip fits" if b == 1 else "out of compiles"}
    if budget():
        get(b // 2 if b > 1 else 2)
    # Every compile with a total (one over the limit too) is a point of the fit.
    fitted = sorted((k, r["total"]) for k, r in results.items() if r.get("total") is not None)
    lo = max(k for k, r in results.items() if r["fits"])
    hi = min((k for k, r in results.items() if not r["fits"] and k > lo), default=None)
    crashed = sorted(k for k, r in results.items() if r.get("crashed"))
    note = f"; libtpu crashed compiling {crashed} rows" if crashed else ""
    if len(fitted) < 2:
        return {"per_chip_batch": lo, "verified": hi == lo + 1,
                "method": f"compiled: {lo} fits, {hi} does not{note}"}
    (b1, m1), (b2, m2) = fitted[0], fitted[-1]
    slope = (m2 - m1) / (b2 - b1)
    intercept = m1 - slope * b1
    predicted = int((hbm - intercept) // slope) if slope > 0 else 4 * lo
    target = max(lo, predicted if hi is None else min(predicted, hi - 1))
    guess = target
    while guess > lo and budget():
        if get(guess)["fits"]:
            lo = guess
            break
        hi = guess
        # The overflow the compiler names, in rows; a crash or no number: a quarter of the gap.
        over = results[guess].get("overflow")
        step = math.ceil(over / slope) if over and slope > 0 else (guess - lo) // 4
        guess = max(lo, guess - max(1, step))
    while hi is not None and hi - lo > 1 and lo != target and budget():  # close the gap
        mid = (lo + hi) // 2
        if get(mid)["fits"]:
            lo = mid
        else:
            hi = mid
    crashed = sorted(k for k, r in results.items() if r.get("crashed"))
    note = f"; libtpu crashed compiling {crashed} rows" if crashed else ""
    fit = (f"per-chip bytes {intercept / 2**30:.2f} GiB + {slope / 2**30:.3f} GiB per row "
           f"(compiles at {b1} and {b2}) predict {predicted}")
    if lo == target:
        method = f"estimated-and-verified: {fit}; compiled {lo}: fits"
    elif hi == lo + 1:
        method = f"{fit}; compiled: {lo} fits, {hi} does not"
    else:
        method = f"{fit}; a lower bound (out of compiles): {lo} fits, {hi} does not"
    return {"per_chip_batch": lo, "predicted": predicted,
            "verified": lo == target or hi == lo + 1, "method": method + note,
            "bytes_fixed": intercept, "bytes_per_row": slope, "first_not_fitting": hi}


def _overflow(error: str) -> float | None:
    """Bytes over the limit in "... required for HLO temporaries (95.92G) exceeds available HBM
    (95.74G)" (libtpu's RESOURCE_EXHAUSTED), or None."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    m = re.search(r"\(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)", error)
    if not m:
        return None
    return float(m[1]) * units[m[2]] - float(m[3]) * units[m[4]]


def plan(config: str, topology: Topology, stage: str, per_chip_batch: int | None = None,
         seq_len: int | None = None, overrides=(), max_batch: bool = True,
         max_compiles: int = 6, measure=None) -> dict:
    """The plan as a dict (what ``--json`` prints); every compile runs in a child process."""
    from omniflatten_jax.distributed import accelerators

    if measure is None and libtpu_path() is None:
        sys.exit(f"error: libtpu is not installed (looked in {LIBTPU_DIR}); run "
                 "bash experiments/launch/venv.sh, or see `plan.py --help`")
    if per_chip_batch is None:
        cfg, _, section = stage_config(config, topology, stage, None, None, overrides)
        batch = getattr(cfg, section).batch_size
        if batch % topology.chips:
            raise ValueError(f"{section}.batch_size={batch} is not a whole number of rows per "
                             f"chip on {topology.chips} chips: pass --per_chip_batch")
        per_chip_batch = batch // topology.chips
    measure = measure or (lambda b: compile_in_child(config, topology, stage, b, seq_len,
                                                     overrides))
    results = {per_chip_batch: measure(per_chip_batch)}
    first = results[per_chip_batch]
    chip = accelerators.chip(first["device_kind"])
    tokens = first["global_batch"] * first["seq_len"]
    step = first["flops_per_token"] * tokens
    out = {
        "config": config, "stage": stage, "topology": topology.describe(),
        "accelerator_type": topology.accelerator_type, "slices": topology.slices,
        "chips": topology.chips, "device_kind": first["device_kind"], "mesh": first["mesh"],
        "global_batch": first["global_batch"], "seq_len": first["seq_len"],
        "per_chip_batch": per_chip_batch, "num_params": first["num_params"],
        "hbm_bytes": chip.hbm_bytes, "fits": first["fits"], "error": first["error"],
        "per_chip": {k: first.get(k) for k in ("params", "opt_state", "batch", "temp",
                                               "argument", "output", "alias", "code",
                                               "total")},
        "flops": {"per_token": first["flops_per_token"], "step": step,
                  "per_chip": step / topology.chips, "peak_per_chip": chip.peak_bf16_flops,
                  "seconds_at_peak": step / topology.chips / chip.peak_bf16_flops},
        "compile_seconds": first["seconds"],
        "attention": first.get("attention"), "pallas_calls": first.get("pallas_calls"),
    }
    if max_batch:
        out["max_per_chip_batch"] = largest_batch(measure, results, per_chip_batch,
                                                  chip.hbm_bytes, max_compiles)
    out["compiles"] = [{"per_chip_batch": b, "fits": r["fits"], "total": r.get("total"),
                        "crashed": r.get("crashed", False), "seconds": round(r["seconds"], 1)}
                       for b, r in results.items()]
    return out


def _gib(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def report(plan: dict) -> str:
    """The plan as a short table."""
    r, f = plan["per_chip"], plan["flops"]
    lines = [
        f"{plan['config']}, stage {plan['stage']}, {plan['topology']}, {plan['device_kind']}",
        f"mesh {plan['mesh']}; global batch {plan['global_batch']} x {plan['seq_len']} tokens "
        f"({plan['per_chip_batch']} row{'s' * (plan['per_chip_batch'] != 1)} per chip); "
        f"{plan['num_params'] / 1e6:,.1f} M parameters",
        "",
        "per chip",
        f"  parameters   {_gib(r['params']):>12}",
        f"  optimiser    {_gib(r['opt_state']):>12}",
        f"  batch        {_gib(r['batch']):>12}",
        f"  temporaries  {_gib(r['temp']):>12}",
        f"  total        {_gib(r['total']):>12}   of {_gib(plan['hbm_bytes'])} HBM: "
        + ("fits" if plan["fits"] else f"does not fit ({plan['error']})"),
        "",
        f"attention {plan['attention']} ({plan['pallas_calls']} Pallas kernel calls in the "
        "step)" if plan["attention"] else "attention: not compiled",
        f"step {f['step']:.3e} FLOPs ({f['per_token']:.3e} per token), {f['per_chip']:.3e} per "
        f"chip: {f['seconds_at_peak']:.3f} s at the peak {f['peak_per_chip'] / 1e12:.0f} "
        "TFLOP/s",
    ]
    best = plan.get("max_per_chip_batch")
    if best:
        n = best["per_chip_batch"]
        lines.append(f"largest per-chip batch: {'?' if n is None else n}"
                     + (f" ({n * plan['seq_len']} tokens)" if n else "")
                     + f" -- {best['method']}")
    lines.append("compiles (rows per chip: bytes per chip, compile time): " + "; ".join(
        f"{c['per_chip_batch']}: "
        + ("crashed" if c["crashed"] else "does not fit" if c["total"] is None
           else _gib(c["total"]) + ("" if c["fits"] else " (over)"))
        + f", {c['seconds']:.0f} s" for c in plan["compiles"]))
    return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("config", "qwen2_0_5b", "a named configuration (experiments/configs)")
    flags.DEFINE_string("topology", "v5p-8", "v5p-N, v4-N, v5e-N, v6e-N, or v5p:AxBxC, v6e:AxB")
    flags.DEFINE_string("stage", "alignment", "the stage whose train step is planned")
    flags.DEFINE_integer("per_chip_batch", None, "rows per chip (global batch = this x chips); "
                         "default: the configuration's batch")
    flags.DEFINE_integer("seq_len", None, "tokens per row (default: the configuration's)")
    flags.DEFINE_integer("slices", 1, "TPU slices joined by the data-centre network")
    flags.DEFINE_multi_string("set", [], "configuration overrides, e.g. --set=mesh.tensor=2")
    flags.DEFINE_bool("max_batch", True, "also find the largest per-chip batch that fits "
                      "(two or more extra compiles)")
    flags.DEFINE_integer("max_compiles", 6, "at most this many compiles in all")
    flags.DEFINE_bool("json", False, "print the numbers as one JSON object instead of a table")
    flags.DEFINE_bool("one", False, "internal: compile once in this process, print JSON lines")


def main() -> None:
    topology = parse_topology(FLAGS.topology, FLAGS.slices)
    if FLAGS.one:
        compile_one(FLAGS.config, topology, FLAGS.stage, FLAGS.per_chip_batch, FLAGS.seq_len,
                    FLAGS.set, emit=lambda s: print(s, flush=True))
        return
    result = plan(FLAGS.config, topology, FLAGS.stage, FLAGS.per_chip_batch, FLAGS.seq_len,
                  FLAGS.set, FLAGS.max_batch, FLAGS.max_compiles)
    print(json.dumps(result, indent=1) if FLAGS.json else report(result))


if __name__ == "__main__":
    cli.run(main, define_flags)
