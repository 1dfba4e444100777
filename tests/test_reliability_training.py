"""Training never turns a fault into silently wrong state: settings are validated when parsed,
a non-finite step never reaches the weights, and a diverging run stops naming its step while
the good checkpoints survive."""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_training import finish, losses, run_cli

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
            state, guard = numerics.apply_if_sound(mode, guard, jnp.asarray(finite), new, old)
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


def test_a_finite_loss_that_leaves_its_recent_range_is_a_divergence():
    """6.4 -> 6,444 (issue #24's peak_lr=10 run) is refused; a hard batch (3x), and a jump
    from a low loss that stays below the first one, are not."""
    new, old = jnp.ones(3), jnp.zeros(3)

    def run(losses, factor=100.0):
        guard, applied = numerics.init_guard(0), []
        for loss in losses:
            loss = jnp.float32(loss)
            ok = numerics.sound(guard, loss, jnp.float32(1.0), factor)
            state, guard = numerics.apply_if_sound("stop", guard, ok, new, old, loss,
                                                   jnp.isfinite(loss))
            applied.append(int(state[0]))
        return applied, guard

    assert run([6.4, 5.0, 15.0, 4.0])[0] == [1, 1, 1, 1]
    assert run([6.4, 0.05, 0.04, 0.03, 5.0])[0] == [1, 1, 1, 1, 1]  # below the first loss
    applied, guard = run([6.4, 6444.0, 958.0])
    assert applied == [1, 0, 0]
    with pytest.raises(numerics.Diverged, match=r"step 2 had a diverged loss \(6444, 1,007 "
                                               r"times the recent 6\.4; train\.divergence_factor"
                                               r"=100\)"):
        numerics.check(guard, TrainConfig(), "alignment", "/ckpt")
    assert run([6.4, 6444.0], factor=0.0)[0] == [1, 1]  # the check off


def test_a_learning_rate_far_too_high_stops_the_run_though_the_loss_stays_finite(
        spoken_corpus, tmp_path):
    _, manifest, _ = spoken_corpus
    run = run_cli(tmp_path, manifest, "--set=optimizer.peak_lr=10",
                  "--set=optimizer.warmup_steps=0", steps=8)
    out, _ = run.communicate(timeout=600)
    assert run.returncode != 0, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: alignment: step ") and "diverged loss" in last, out[-3000:]


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
    assert last.startswith("error: alignment: step "), out[-3000:]
    assert "non-finite" in last or "diverged loss" in last, out[-3000:]
    first_bad = int(last.split("step ")[1].split()[0])
    assert "Traceback" not in out
    kept = sorted(int(p) for p in os.listdir(stage / "checkpoints") if p.isdigit())
    assert kept and max(kept) < first_bad, (kept, first_bad)
    assert (stage / "eval.json").read_text() == eval_before  # not overwritten
    for step in kept:  # every checkpoint left is finite and loads
        params, _, _ = checkpoint.load_params(stage / "checkpoints" / str(step))
        check_finite(params, str(step), "")
    # the log shows what happened
    assert any(not np.isfinite(v) or v > 1000 for v in losses(stage).values())
    assert json.loads(eval_before)["step"] == 4


def test_a_held_stage_lock_stops_a_second_run_and_a_stale_one_is_taken_over(tmp_path):
    import socket
    import subprocess

    from omniflatten_jax.distributed import locks

    stage = tmp_path / "alignment"
    with locks.hold(str(stage)):
        holder = json.loads((stage / ".lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(locks.WorkdirLockedError, match=rf"pid {os.getpid()} on"):
            with locks.hold(str(stage)):
                pass
    assert not (stage / ".lock").exists()  # released
    # A holder that died (kill -9 leaves its lock behind), or whose pid was reused.
    gone = subprocess.Popen(["true"])
    gone.wait()
    for dead in ({"pid": gone.pid}, {"pid": os.getpid(), "started_ticks": "1"}):
        (stage / ".lock").write_text(json.dumps(dict(dead, host=socket.gethostname())))
        with locks.hold(str(stage)):
            assert json.loads((stage / ".lock").read_text())["pid"] == os.getpid()


def test_an_empty_or_torn_lock_file_is_held_until_nobody_touches_it(tmp_path):
    """A lock read between its holder's create and write, or torn by a crash, is not a stale
    lock (issue #24: two runs trained one stage)."""
    from omniflatten_jax.distributed import locks

    stage = tmp_path / "alignment"
    stage.mkdir()
    for content in ("", '{"pid": 12'):
        (stage / ".lock").write_text(content)
        with pytest.raises(locks.WorkdirLockedError, match=r"cannot be read \(touched \d s ago"):
            with locks.hold(str(stage)):
                pass
        assert (stage / ".lock").read_text() == content  # left to its holder
    old = time.time() - locks.STALE_AFTER_S - 60
    os.utime(stage / ".lock", (old, old))
    with locks.hold(str(stage)):  # untouched for longer than a holder's heartbeat allows
        assert json.loads((stage / ".lock").read_text())["pid"] == os.getpid()


def test_errors_end_in_one_line_before_any_work(tmp_path):
    import subprocess
    import sys

    from helpers import SMALL_MODEL
    from test_training import ROOT

    from omniflatten_jax.config.token_layout import TokenLayout
    from omniflatten_jax.model import transformer

    layout = TokenLayout("bytes", 256, 32)
    other = checkpoint.save_params(  # two layers; the embedded config's model has four
        tmp_path / "other", 1, transformer(SMALL_MODEL, layout.vocab_size).init(
            jax.random.key(0)), checkpoint.CheckpointMeta(SMALL_MODEL, layout))
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"audio": "a.wav", "text": "café"}\n'.encode("latin-1"))
    run = [sys.executable, os.path.join(ROOT, "experiments", "run.py"), "--stage=alignment"]
    cases = {
        (f"--data=manifest:{latin1}",): f"error: alignment: {latin1}:1: not UTF-8",
        (f"--init_from={other}",): "error: alignment: " + other + " holds another model",
        ("--set=train.checkpoint_every=0",): "error: cannot set train.checkpoint_every to '0'",
        ("--set=optimizer.peak_lr=nan",): "error: cannot set optimizer.peak_lr to 'nan'",
        ("--config=nope",): "error: unknown config 'nope'",
        ("--init_from=/nonexistent/ckpt",): "error: alignment: checkpoint /nonexistent/ckpt",
    }
    for args, first_words in cases.items():
        out = subprocess.run(run + [f"--workdir={tmp_path / 'w'}", *args], capture_output=True,
                             text=True, cwd=ROOT, timeout=300)
        assert out.returncode == 1, (args, out.stderr[-2000:])
        lines = out.stderr.strip().splitlines()
        assert lines[-1].startswith(first_words), (args, lines[-3:])
        assert "Traceback" not in out.stderr, args


def _children(pid: int) -> list:
    import psutil

    return psutil.Process(pid).children(recursive=True)


def test_ctrl_c_stops_training_at_the_step_boundary_and_twice_at_once():
    """Python raises KeyboardInterrupt wherever the main thread is, and inside a garbage
    collection callback (JAX has one) it is printed and dropped: training went on. The watch
    takes the first Ctrl-C to the next step, a second one at once (in a process of its own:
    a KeyboardInterrupt must not reach pytest)."""
    import subprocess
    import sys

    script = """if True:
        import os, signal, time
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from omniflatten_jax.training.preemption import PreemptionWatch
        with PreemptionWatch() as watch:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            print("first: went on", flush=True)
            try:
                watch.reached(2)
            except KeyboardInterrupt as e:
                print("at the step:", e, flush=True)
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
                print("second: went on")
            except KeyboardInterrupt:
                print("second: at once", flush=True)
        print("restored:", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=root, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.stdout.splitlines() == ["first: went on", "at the step: interrupted after step 2",
                                       "second: at once", "restored: True"], out.stderr[-2000:]


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_no_data_worker_outlives_its_run(spoken_corpus, tmp_path, how):
    import signal
    import subprocess
    import time

    import psutil

    _, manifest, _ = spoken_corpus
    proc = run_cli(tmp_path, manifest, "--set=data.num_workers=2", steps=100000)
    deadline = time.time() + 400
    workers = []
    while time.time() < deadline and proc.poll() is None:
        workers = [c for c in _children(proc.pid) if "python" in c.name().lower()]
        if len(workers) >= 2 and (tmp_path / "alignment" / "metrics.jsonl").exists():
            break
        time.sleep(0.5)
    assert proc.poll() is None and len(workers) >= 2, "training with 2 workers did not start"
    proc.send_signal(getattr(signal, how))
    try:
        output = proc.communicate(timeout=300)[0]
    except subprocess.TimeoutExpired:  # say where it is stuck (cli.start: SIGUSR1)
        proc.send_signal(signal.SIGUSR1)
        time.sleep(3)
        proc.kill()
        output = proc.communicate()[0]
        raise AssertionError(f"the run did not stop on {how}; its threads:\n{output[-6000:]}")
    gone, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive, f"{len(alive)} data workers outlived the run ({how})"
    if how == "SIGINT":  # Ctrl-C: where it stops, then one line (before: a 20-line traceback)
        assert proc.returncode == 130, output[-3000:]
        assert "Ctrl-C: stopping after this step" in output
        assert "stopped by Ctrl-C: interrupted after step" in output
        assert "Traceback" not in output, output[-3000:]


def test_a_resume_with_another_data_worker_count_is_refused_naming_the_setting(
        spoken_corpus, tmp_path):
    """Each Grain worker packs its own slice of the examples, so the batches depend on
    data.num_workers: a position saved with 1 worker cannot go on with none (it was Grain's
    KeyError: 'parent')."""
    _, manifest, _ = spoken_corpus
    finish(run_cli(tmp_path, manifest, "--set=data.num_workers=1", steps=3))
    out, _ = run_cli(tmp_path, manifest, steps=4).communicate(timeout=600)  # 0 workers
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: alignment: ") and "saved with data.num_workers=1, and " \
        "this run has 0" in last and "Resume with --set=data.num_workers=1." in last, out[-3000:]
    assert "Traceback" not in out
    out = finish(run_cli(tmp_path, manifest, "--set=data.num_workers=1", steps=4))
    assert "resuming from step 3" in out


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem of a given size (tmpfs; needs root, as on the CI machine)."""
    import subprocess

    mounted = []

    def make(megabytes: int):
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}M", "tmpfs",
                               str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode()[:200]}")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_full_disk_is_said_in_one_line_before_training_or_at_the_failed_save(
        spoken_corpus, tmp_path, small_disk):
    _, manifest, _ = spoken_corpus
    # Too small for one checkpoint step of the embedded model (about 40 MB): said up front.
    tiny = small_disk(20)
    out, _ = run_cli(tiny, manifest).communicate(timeout=600)
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: alignment: ") and "GB free, and one checkpoint step needs" \
        in last, out[-3000:]
    assert "alignment step 1/" not in out
    # Room for the first step's checkpoint but not the second's: the failed background save
    # is the run's last line, naming the step and the cause.
    disk = small_disk(70)
    proc = run_cli(disk, manifest, "--set=train.checkpoint_every=1",
                   "--set=train.keep_checkpoints=3", steps=6)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: alignment: saving ") and "No space left on device" in last, \
        out[-3000:]
    assert "Traceback" not in out
