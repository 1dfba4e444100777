"""A misconfigured cluster says why, in one line, before any work: partial or impossible
cluster flags, a coordinator nobody can reach (within `--cluster_timeout_s`, not JAX's
5-minute abort), and hosts given different settings (each differing setting named with its
values, on a real 2-process cluster on 127.0.0.1)."""

import os
import subprocess
import sys
import time

import portpicker
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_py(workdir, *flags):
    return [sys.executable, os.path.join(ROOT, "experiments", "run.py"), "--stage=alignment",
            f"--workdir={workdir}", *flags]


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Check failure" not in proc.stderr, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("flags, message", [
    (["--num_processes=2"], "give all of --coordinator_address, --num_processes and "
                            "--process_id, or none of them"),
    (["--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=2"],
     "--process_id=2 is not one of the cluster's processes 0 to 1 (--num_processes=2)"),
    (["--coordinator_address=127.0.0.1", "--num_processes=2", "--process_id=1"],
     "--coordinator_address='127.0.0.1' is not HOST:PORT"),
])
def test_partial_or_impossible_cluster_flags_are_one_line(tmp_path, flags, message):
    proc = subprocess.run(run_py(tmp_path, "--distributed", *flags), capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert f"error: {message}" in one_line_error(proc)
    assert not os.listdir(tmp_path)  # nothing was done


def test_an_unreachable_coordinator_is_named_within_the_timeout(tmp_path):
    def timed(*flags):
        start = time.monotonic()
        proc = subprocess.run(run_py(tmp_path, "--distributed", *flags), capture_output=True,
                              text=True, cwd=ROOT, timeout=240)
        return proc, time.monotonic() - start

    # The same command refused at once: what starting Python and JAX costs on this machine now.
    _, start_up = timed("--num_processes=2")
    address = f"127.0.0.1:{portpicker.pick_unused_port()}"  # nobody listens there
    proc, elapsed = timed(f"--coordinator_address={address}", "--num_processes=2",
                          "--process_id=1", "--cluster_timeout_s=3")
    assert (f"error: the coordinator at {address} did not answer within 3 s"
            in one_line_error(proc))
    assert elapsed - start_up < 30, (elapsed, start_up)  # the 3 s wait, not JAX's 300 s


def test_hosts_given_different_settings_name_every_setting_that_differs(tmp_path):
    port = portpicker.pick_unused_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    extra = ([], ["--set=train.seed=1", "--set=train.batch_size=16"])
    procs = [subprocess.Popen(
        run_py(tmp_path, "--distributed", f"--coordinator_address=127.0.0.1:{port}",
               "--num_processes=2", f"--process_id={i}", "--cluster_timeout_s=120", *extra[i]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 1, err[-3000:]
        assert ("error: hosts were given different settings: train.batch_size is 8 on process "
                "0 but 16 on process 1; train.seed is 0 on process 0 but 1 on process 1") in err
        assert "Traceback" not in err
    assert not os.listdir(tmp_path)  # refused before any work
