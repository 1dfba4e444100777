"""Training never turns a fault into silently wrong state: settings are validated when parsed,
a non-finite step never reaches the weights, and a diverging run stops naming its step while
the good checkpoints survive."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_training import losses, run_cli

from experiments.configs import get_config
from omniflatten_jax import checkpoint
from omniflatten_jax.config import TrainConfig, override
from omniflatten_jax.finite import NonFiniteError, check_finite
from omniflatten_jax.training import guard as numerics


@pytest.mark.parametrize("setting, named", [
    ("optimizer.peak_lr=nan", "optimizer.peak_lr"),
    ("optimizer.peak_lr=-1e-3", "optimizer.peak_lr"),
    ("optimizer.peak_lr=inf", "optimizer.peak_lr"),
    ("train.steps=0", "train.steps"),
    ("dialogue_train.steps=-5", "dialogue_train.steps"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints"),
    ("train.checkpoint_every=0", "train.checkpoint_every"),
    ("train.log_every=0", "train.log_every"),
    ("train.on_nonfinite=ignore", "train.on_nonfinite"),
])
def test_bad_settings_are_refused_when_parsed_naming_the_setting(setting, named):
    cfg = get_config("embedded")
    with pytest.raises(ValueError, match=rf"cannot set {named} .*must be"):
        override(cfg, setting)


def test_the_guard_stops_at_the_first_bad_step_or_skips_and_counts():
    new, old = jnp.ones(3), jnp.zeros(3)
    for mode, expect_applied in (("stop", [1, 0, 0, 0]), ("skip", [1, 0, 1, 0])):
        guard, applied = numerics.init_guard(10), []
        for finite in (True, False, True, False):
            state, guard = numerics.apply_if_finite(mode, guard, jnp.asarray(finite), new, old)
            applied.append(int(state[0]))
        assert applied == expect_applied, mode
        assert (int(guard["step"]), int(guard["skipped"]), int(guard["first_bad"])) == (14, 2, 12)
    stop = TrainConfig(on_nonfinite="stop")
    with pytest.raises(numerics.Diverged, match="step 12 had a non-finite"):
        numerics.check(guard, stop, "alignment", "/ckpt")
    skip = TrainConfig(on_nonfinite="skip", max_skipped_steps=2)
    assert numerics.check(guard, skip, "alignment", "/ckpt") == 2
    with pytest.raises(numerics.Diverged, match="more than train.max_skipped_steps=1"):
        numerics.check(guard, TrainConfig(on_nonfinite="skip", max_skipped_steps=1), "a", "/c")
    assert numerics.check(numerics.init_guard(3), stop, "a", "/c") == 0


def test_check_finite_names_the_tensor():
    tree = {"layer": {"w": np.ones((2, 2), np.float32), "b": np.array([1.0, np.nan])}}
    with pytest.raises(NonFiniteError, match=r"\['layer'\]\['b'\] \(1 values\)"):
        check_finite(tree, "x", "fix")
    check_finite(jax.tree.map(np.nan_to_num, tree), "x", "fix")


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_good_checkpoints(
        spoken_corpus, tmp_path):
    _, manifest, _ = spoken_corpus
    good = run_cli(tmp_path, manifest, "--set=train.checkpoint_every=2",
                   "--set=train.keep_checkpoints=2", steps=4)
    out, _ = good.communicate(timeout=600)
    assert good.returncode == 0, out[-3000:]
    stage = tmp_path / "alignment"
    eval_before = (stage / "eval.json").read_text()
    # The same stage resumed for more steps at an absurd learning rate: it diverges.
    bad = run_cli(tmp_path, manifest, "--set=train.checkpoint_every=1",
                  "--set=train.keep_checkpoints=2", "--set=optimizer.peak_lr=1e30",
                  "--set=optimizer.warmup_steps=0", steps=12)
    out, _ = bad.communicate(timeout=600)
    assert bad.returncode != 0, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: alignment: step ") and "non-finite" in last, out[-3000:]
    first_bad = int(last.split("step ")[1].split()[0])
    assert "Traceback" not in out
    kept = sorted(int(p) for p in os.listdir(stage / "checkpoints") if p.isdigit())
    assert kept and max(kept) < first_bad, (kept, first_bad)
    assert (stage / "eval.json").read_text() == eval_before  # not overwritten
    for step in kept:  # every checkpoint left is finite and loads
        params, _, _ = checkpoint.load_params(stage / "checkpoints" / str(step))
        check_finite(params, str(step), "")
    assert any(np.isnan(v) for v in losses(stage).values())  # the log shows what happened
    assert json.loads(eval_before)["step"] == 4
