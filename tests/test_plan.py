"""experiments/plan.py: the pre-flight memory/FLOP plan on compile-only TPU devices.

The compiling tests run plan.py in a subprocess (libtpu, from `.venv/libtpu` as venv.sh
installs it) on the shrunk Qwen2-0.5B; they skip where libtpu is not installed.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import plan
from omniflatten_jax.distributed import accelerators
from omniflatten_jax.tokens.batches import FIELD_DTYPES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_libtpu = pytest.mark.skipif(plan.libtpu_path() is None,
                                  reason=f"libtpu not installed ({plan.LIBTPU_DIR})")


def run_plan(*args, check=True):
    proc = subprocess.run([sys.executable, "experiments/plan.py", "--config=qwen2_0_5b_shrunk",
                           "--nomax_batch", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("name, libtpu, chips, units", [
    ("v5p-8", "v5:2x2x1", 4, "v5p-8"), ("v5p-64", "v5:2x4x4", 32, "v5p-64"),
    ("v5p-128", "v5:4x4x4", 64, "v5p-128"), ("v6e-16", "v6e:4x4", 16, "v6e-16"),
    ("v6e-8", "v6e:2x4", 8, "v6e-8"), ("v5e-16", "v5e:4x4", 16, "v5litepod-16"),
    ("v5litepod-32", "v5e:4x8", 32, "v5litepod-32"), ("v5p:4x4x2", "v5:4x4x2", 32, "v5p-64"),
])
def test_topology_names(name, libtpu, chips, units):
    t = plan.parse_topology(name)
    assert (t.libtpu_name, t.chips, t.accelerator_type) == (libtpu, chips, units)
    assert plan.parse_topology(name, slices=2).chips == 2 * chips


@pytest.mark.parametrize("bad", ["v5p-7", "v5p-12", "v6e:4x4x4", "tpu-8", "v5p"])
def test_bad_topology_names(bad):
    with pytest.raises(ValueError):
        plan.parse_topology(bad)


def fake_measure(fixed, per_row, hbm, crash=(), square=0.0):
    """Per-chip bytes affine in the batch (plus `square` b^2); over `hbm` the compile fails
    with libtpu's message, in `crash` it crashes."""
    def measure(b):
        total = fixed + per_row * b + square * b * b
        if b in crash:
            return {"fits": False, "total": None, "crashed": True, "error": "crashed"}
        if total > hbm:
            return {"fits": False, "total": None, "error": "RESOURCE_EXHAUSTED",
                    "overflow": total - hbm}
        return {"fits": True, "total": total}
    return measure


@pytest.mark.parametrize("start", [1, 3, 8, 100])
def test_largest_batch_is_predicted_then_verified(start):
    gib = 2**30
    results = {}
    best = plan.largest_batch(fake_measure(5 * gib, gib // 2, 40 * gib), results, start,
                              40 * gib, max_compiles=8)
    assert best["per_chip_batch"] == 70 and best["verified"]
    assert best["method"].startswith("estimated-and-verified")
    assert len(results) <= 4


def test_largest_batch_steps_down_by_the_reported_overflow():
    gib = 2**30  # memory grows faster than the fit at 4 and 8 says: 17 is predicted, 16 fits
    results = {}
    best = plan.largest_batch(fake_measure(5 * gib, 4 * gib, 95 * gib, square=gib // 10), results,
                              8, 95 * gib, max_compiles=6)
    assert best["predicted"] == 17 and best["per_chip_batch"] == 16
    assert best["verified"] and best["first_not_fitting"] == 17
    assert sorted(results) == [4, 8, 15, 16, 17]


def test_largest_batch_steps_down_past_a_crash():
    gib = 2**30
    best = plan.largest_batch(fake_measure(5 * gib, gib // 2, 40 * gib, crash={70, 69}), {}, 8,
                              40 * gib, max_compiles=8)
    assert best["per_chip_batch"] < 69 and "crashed" in best["method"]


def test_overflow_from_the_compiler_message():
    error = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
             "temporaries (95.92G) exceeds available HBM (95.74G).")
    assert plan._overflow(error) == pytest.approx(0.18 * 2**30)
    assert plan._overflow("libtpu crashed") is None


def test_flops_formula():
    cfg = plan.stage_config("qwen2_7b", plan.parse_topology("v5p-64"), "alignment", 8, None)[0]
    m, vocab, n = cfg.model, cfg.layout.vocab_size, 7_000_000_000
    per_token = accelerators.train_flops_per_token(n, vocab, m, 1024)
    # untied: the input table is a lookup; causal attention counts half of 12 L T H d
    attention = 6 * m.num_layers * 1024 * m.num_heads * m.head_dim
    assert per_token == 6 * (n - vocab * m.hidden_size) + attention
    assert accelerators.peak_flops("TPU v5") == 459e12
    with pytest.raises(ValueError, match="TPU v99"):
        accelerators.chip("TPU v99")


@needs_libtpu
def test_plan_one_and_two_slices():
    one = json.loads(run_plan("--topology=v5p-8", "--per_chip_batch=2", "--json").stdout)
    two = json.loads(run_plan("--topology=v5p-8", "--slices=2", "--per_chip_batch=2",
                              "--json").stdout)
    row_bytes = 128 * sum(np.dtype(d).itemsize for d in FIELD_DTYPES.values())
    for p, chips, dp in ((one, 4, 4), (two, 8, 8)):
        assert p["fits"] and p["error"] is None and p["chips"] == chips
        assert p["global_batch"] == 2 * chips and p["seq_len"] == 128
        mem = p["per_chip"]
        # FSDP over the 4 chips of a slice (the data axis spans the slices): fp32 params and
        # two Adam moments sharded like them; the few replicated norm scales add a little
        full = 4 * p["num_params"]
        assert full / 4 <= mem["params"] < full / 4 * 1.05
        assert 2 * mem["params"] <= mem["opt_state"] <= 2 * mem["params"] + 64
        assert mem["batch"] == 2 * row_bytes
        assert mem["total"] >= mem["params"] + mem["opt_state"] + mem["batch"] + mem["temp"]
        assert mem["total"] < p["hbm_bytes"]
        assert p["flops"]["step"] == p["flops"]["per_token"] * p["global_batch"] * 128
        assert p["flops"]["per_chip"] == pytest.approx(p["flops"]["step"] / chips)
    assert one["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert two["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    assert one["per_chip"]["params"] == two["per_chip"]["params"]
    assert one["device_kind"] == "TPU v5"
    # packed attention compiled as the splash kernel, once per layer body and pass
    assert one["attention"] == "splash" and one["pallas_calls"] > 0
    assert one["hbm_bytes"] == accelerators.chip("TPU v5").hbm_bytes


@needs_libtpu
def test_a_dialogue_row_of_8192_tokens_compiles_with_the_tpu_kernel():
    p = json.loads(run_plan("--topology=v5p-8", "--stage=half_duplex", "--per_chip_batch=1",
                            "--seq_len=8192", "--json").stdout)
    assert p["fits"] and p["seq_len"] == 8192 and p["attention"] == "splash"
    assert p["pallas_calls"] > 0
    # no [T, T] mask or score matrix: 8192^2 fp32 scores alone would be 256 MiB per head
    assert p["per_chip"]["temp"] < 2**28, p["per_chip"]


@needs_libtpu
def test_too_large_a_batch_does_not_fit_cleanly():
    proc = run_plan("--topology=v5e-4", "--per_chip_batch=65536", "--seq_len=512")
    assert "does not fit (RESOURCE_EXHAUSTED" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@needs_libtpu
def test_a_batch_that_does_not_divide_is_a_usage_error():
    proc = run_plan("--topology=v5p-8", "--set=mesh.fsdp=2", "--set=mesh.data=2",
                    "--set=train.batch_size=6", check=False)
    assert proc.returncode != 0 and "not a whole number of rows per chip" in proc.stderr


@pytest.mark.parametrize("topology, message", [
    ("v9z-3", "unknown topology 'v9z-3': use v5p-N"), ("v5p-7", "v5p-7: v5p-N counts "
                                                               "TensorCores, 2 per chip"),
    ("v5p:2x4", "v5p:2x4: a v5p grid has 3 dimensions")])
def test_plan_on_an_unknown_topology_says_so_in_one_line(topology, message):
    proc = run_plan(f"--topology={topology}", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), proc.stderr
    assert "--per_chip_batch" not in proc.stderr + proc.stdout
