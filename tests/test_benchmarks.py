"""The side-by-side benchmark runs on CPU with tiny shapes and compares like with like.

Timing is not asserted (benchmarks print figures; tests assert behaviour): the check is that
both sides train the same model on the same rows, so their first-step losses agree.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSS_TOL = 1e-4  # fp32 on CPU: the same weights and rows, different summation orders


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_ours_and_transformers_start_from_the_same_model_and_rows(family):
    proc = subprocess.run(
        [sys.executable, "experiments/benchmark_vs_torch.py", "--batch=2", "--seq_len=128",
         "--steps=1", "--warmup=1", "--notorch_compile", f"--set=model.family={family}"],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = dict(re.findall(r"^\s+(ours|torch)\s.*first loss ([\d.]+)$", proc.stdout, re.M))
    assert set(losses) == {"ours", "torch"}, proc.stdout
    assert abs(float(losses["ours"]) - float(losses["torch"])) < LOSS_TOL, proc.stdout
    assert re.search(r"ratio \(ours / torch tokens/s\): [\d.]+x", proc.stdout), proc.stdout
