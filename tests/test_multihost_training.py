"""Training on a real 2-process JAX cluster on 127.0.0.1 (two fake CPU devices per process),
through `experiments/run.py --distributed`, against one process with the same 4 devices.

The data order depends on the seed and the step only, so every run below must log the same
loss at every step as the one-process reference: after a kill -9 and a resume, after a
SIGTERM (preemption) save on one host of two, and on resuming that checkpoint with another
process count and mesh shape. Losses agree to rtol 1e-4: the programs differ only in how the
cross-device reductions are grouped (gloo between processes, in-process within one).
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

from omniflatten_jax.training.metrics import read_metrics
from omniflatten_jax.training.preemption import EXIT_CODE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 10
RTOL = 1e-4


def command(workdir, manifest, *extra, script="run"):
    head = [os.path.join(ROOT, "experiments", f"{script}.py")] + (
        ["--stage=alignment", f"--steps={STEPS}"] if script == "run" else [])
    return [sys.executable, *head, f"--workdir={workdir}", f"--data=manifest:{manifest}",
            "--set=train.batch_size=4", "--set=train.seq_len=128", "--set=train.log_every=1",
            "--set=train.checkpoint_every=5", "--set=data.num_workers=0",
            "--set=eval.max_examples=4", "--set=eval.tts_max_examples=2",
            "--set=speech.fit_max_utterances=64", *extra]


def start(args, devices):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, env=env)


def one_process(workdir, manifest, *extra):
    return [start(command(workdir, manifest, *extra), devices=4)]


def two_processes(workdirs, manifest, *extra, script="run"):
    """Processes 0 and 1 of one cluster; `workdirs` is one shared folder or one per process."""
    port = portpicker.pick_unused_port()
    workdirs = workdirs if isinstance(workdirs, list) else [workdirs] * 2
    return [start(command(workdirs[i], manifest, *extra, "--distributed",
                          f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                          f"--process_id={i}", script=script), devices=2)
            for i in range(2)]


def finish(procs, code=0):
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == code, out[-4000:]
    return outs


def losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(str(workdir / "alignment"))}


def wait_for(condition, procs, what):
    deadline = time.time() + 300
    while not condition():
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            outs = [p.communicate()[0][-3000:] for p in procs]
            pytest.fail(f"the run ended before {what}: {outs}")
        time.sleep(0.05)


def assert_same_losses(got, reference, steps):
    assert sorted(s for s in got if s in steps) == sorted(steps)
    worst = max(abs(got[s] - reference[s]) / abs(reference[s]) for s in steps)
    print(f"losses of steps {min(steps)}-{max(steps)}: largest relative difference {worst:.2e}")
    np.testing.assert_allclose([got[s] for s in steps], [reference[s] for s in steps],
                               rtol=RTOL)


@pytest.fixture(scope="module")
def reference(spoken_corpus, tmp_path_factory):
    """One process, 4 devices: the losses every other run must reproduce; and its workdir,
    whose prepared data the other runs copy (so that they read the very same dataset)."""
    _, manifest, _ = spoken_corpus
    workdir = tmp_path_factory.mktemp("reference")
    out = finish(one_process(workdir, manifest))[0]
    assert f"alignment step {STEPS}/{STEPS}" in out
    return manifest, workdir, losses(workdir)


def with_data(reference, path):
    shutil.copytree(reference[1] / "data", path / "data")
    return path


def test_two_processes_killed_and_resumed_match_one_process(reference, tmp_path):
    manifest, _, expected = reference
    workdir = with_data(reference, tmp_path)
    procs = two_processes(workdir, manifest)
    saved = workdir / "alignment" / "checkpoints" / "5" / "params"
    wait_for(saved.is_dir, procs, "its step-5 checkpoint")
    time.sleep(0.5)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    finish(procs, code=-signal.SIGKILL)
    outs = finish(two_processes(workdir, manifest))
    assert "resuming from step 5" in outs[0] and "on 2 processes" in outs[0]
    assert "alignment step" not in outs[1]  # process 1 logs only warnings and errors
    rows = read_metrics(str(workdir / "alignment"))
    assert [r["step"] for r in rows].count(1) == 1  # one writer: one line per logged step
    assert_same_losses(losses(workdir), expected, range(1, STEPS + 1))


def test_two_processes_scanning_rematerialised_layers_with_a_chunked_loss_match_one_process(
        reference, tmp_path):
    """The pod settings (scanned layers, full remat, the loss over chunks) on a 2-process
    cluster give the losses of the looped, full-logits reference: each is exact in fp32."""
    manifest, _, expected = reference
    workdir = with_data(reference, tmp_path)
    finish(two_processes(workdir, manifest, "--set=model.scan_layers=true",
                         "--set=model.remat=full", "--set=model.loss_chunk=32"))
    assert_same_losses(losses(workdir), expected, range(1, STEPS + 1))


def test_sigterm_saves_on_every_host_and_resumes_on_one_process_and_another_mesh(
        reference, tmp_path):
    """A preemption notice to host 1 of a 2-slice data=2 x fsdp=2 run: both hosts save one
    agreed step and exit 143; one process with fsdp=4 resumes it to the same losses."""
    manifest, _, expected = reference
    workdir = with_data(reference, tmp_path)
    procs = two_processes(workdir, manifest, "--set=mesh.slices=2",
                          "--set=train.checkpoint_every=100")
    wait_for(lambda: len(losses(workdir)) >= 2, procs, "step 2")
    procs[1].send_signal(signal.SIGTERM)
    outs = finish(procs, code=EXIT_CODE)
    assert "preempted; saved step" in outs[0]
    steps = sorted(int(p.name) for p in (workdir / "alignment" / "checkpoints").iterdir()
                   if p.name.isdigit())
    assert len(steps) == 1 and 2 <= steps[0] < STEPS
    out = finish(one_process(workdir, manifest))[0]
    assert f"resuming from step {steps[0]}" in out and "'fsdp': 4" in out
    assert_same_losses(losses(workdir), expected, range(1, STEPS + 1))


def test_sigterm_on_one_process_saves_and_resumes(reference, tmp_path):
    manifest, _, expected = reference
    workdir = with_data(reference, tmp_path)
    procs = one_process(workdir, manifest, "--set=train.checkpoint_every=100")
    wait_for(lambda: len(losses(workdir)) >= 2, procs, "step 2")
    procs[0].send_signal(signal.SIGTERM)
    finish(procs, code=EXIT_CODE)
    out = finish(one_process(workdir, manifest))[0]
    assert "resuming from step" in out
    assert_same_losses(losses(workdir), expected, range(1, STEPS + 1))


def test_hosts_that_read_different_datasets_refuse_to_train(reference, tmp_path):
    """Process 1 sees another workdir: first one without the data (not shared storage), then
    one whose dataset differs from process 0's under the same name (a fingerprint error)."""
    manifest, ours, _ = reference
    lonely = tmp_path / "lonely"
    outs = finish(two_processes([ours, lonely], manifest, "--stage=alignment",
                                script="prepare"), code=1)
    assert "process 1 does not see the dataset process 0 built" in outs[1]
    assert "another host does not see" in outs[0]
    assert all("storage every host shares" in out for out in outs)
    other = with_data(reference, tmp_path / "other")
    report = next((other / "data" / "tfds").glob("*/*/build_report.json"))
    report.write_text(report.read_text().replace("{", '{"edited": 1, ', 1))
    outs = finish(two_processes([ours, other], manifest, "--stage=alignment",
                                script="prepare"), code=1)
    for out in outs:
        assert "differs between hosts" in out and "process 0 and processes [1]" in out
