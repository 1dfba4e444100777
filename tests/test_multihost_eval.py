"""Evaluation on a real 2-process JAX cluster (127.0.0.1, 2 CPU devices each) equals the same
evaluation in one process with 4 devices: parameters placed once over devices of both hosts,
generation, cross-entropy, duplex decoding and a recording streamed as the stages' FDB
evaluation streams its samples, with no host gathering the parameters."""

import json
import os
import subprocess
import sys

import numpy as np
import portpicker
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(*args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.Popen([sys.executable, "-m", "tests.multihost_eval_worker", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)


def result(proc) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("placement", ["sharded", "replicated"])
def test_two_processes_evaluate_like_one(placement):
    port = portpicker.pick_unused_port()
    cluster = [start(f"--process_id={i}", "--processes=2", f"--port={port}", "--devices=2",
                     f"--placement={placement}") for i in range(2)]
    single = result(start("--devices=4", f"--placement={placement}"))
    hosts = [result(p) for p in cluster]
    assert [h["processes"] for h in hosts] == [2, 2] and single["processes"] == 1
    for got in hosts:
        assert got["devices"] == 4 and got["embed_devices"] == 4
        assert got["generated"] == single["generated"]
        assert got["assistant_speech"] == single["assistant_speech"]
        assert got["fdb_sample"] == single["fdb_sample"]  # output.wav byte for byte
        assert got["fdb_sample"]["spoken"] and got["fdb_sample"]["output_seconds"] == 3.0
        a, b = got["cross_entropy"], single["cross_entropy"]
        assert a["tokens"] == b["tokens"]
        np.testing.assert_allclose(a["overall"], b["overall"], rtol=1e-5)
        for key in b["per_stream"]:
            np.testing.assert_allclose(a["per_stream"][key], b["per_stream"][key], rtol=1e-5)
