"""The alignment stage end to end: CLI, resume after a kill, the shrunken 0.5B config, and
memorisation (the pipeline's end-to-end correctness check)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from data_pipelines.builders.speech_text import data_source
from data_pipelines.pipelines import alignment_pipeline
from data_pipelines.prepare import prepare_speech_text
from experiments.configs import get_config
from omniflatten_jax import checkpoint
from omniflatten_jax.config import override
from omniflatten_jax.evaluation.alignment import transcribe
from omniflatten_jax.evaluation.text_metrics import cer
from omniflatten_jax.stage_plan import plan_stage
from omniflatten_jax.training.metrics import read_metrics
from omniflatten_jax.training.runner import train_stage
from tests.helpers import run_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def alignment_plan(cfg):
    return plan_stage(cfg, "alignment")


def run_cli(workdir, manifest, *extra, steps=6):
    args = [sys.executable, os.path.join(ROOT, "experiments", "run.py"), "--stage=alignment",
            f"--workdir={workdir}", f"--data=manifest:{manifest}", f"--steps={steps}",
            "--set=train.batch_size=4", "--set=train.seq_len=128", "--set=train.log_every=1",
            "--set=train.checkpoint_every=3", "--set=data.num_workers=0",
            "--set=eval.max_examples=4", "--set=eval.tts_max_examples=2",
            "--set=speech.fit_max_utterances=64", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, preexec_fn=_ctrl_c_as_in_a_terminal)


def _ctrl_c_as_in_a_terminal() -> None:
    """A shell starts background jobs with SIGINT ignored, and the run would inherit that
    (pytest run with `&`): the SIGINT tests then hung for want of a Ctrl-C, not of a fix."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(proc):
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def losses(stage_dir):
    by_step = {}
    for row in read_metrics(stage_dir):
        by_step[row["step"]] = row["loss"]
    return by_step


@pytest.fixture(scope="module")
def six_steps(spoken_corpus, tmp_path_factory):
    """The alignment stage run by the CLI for 6 steps (checkpoints at 3 and 6)."""
    _, manifest, _ = spoken_corpus
    workdir = tmp_path_factory.mktemp("six_steps")
    return workdir, manifest, finish(run_cli(workdir, manifest))


def test_cli_runs_the_stage_then_reports_it_complete(six_steps):
    tmp_path, manifest, out = six_steps
    stage = tmp_path / "alignment"
    assert "alignment step 6/6" in out and "ASR CER" in out
    result = json.loads((stage / "eval.json").read_text())
    assert set(result["asr"]) == {"n", "cer", "wer"} and result["step"] == 6
    assert result["baselines"]["asr_empty"]["cer"] == 1.0
    assert sorted(losses(stage)) == [1, 2, 3, 4, 5, 6]
    assert any(f.startswith("events") for f in os.listdir(stage / "tensorboard"))
    row = read_metrics(stage)[-1]
    assert {"loss/asr_text", "loss/tts_speech", "tokens_per_s", "tokens_per_s_per_chip",
            "lr"} <= set(row)
    assert "mfu" not in row  # no peak FLOP/s figure for a CPU
    again = finish(run_cli(tmp_path, manifest))
    assert "alignment is complete" in again and "step 1/6" not in again
    # The trained checkpoint exports to a folder that transformers loads.
    transformers = pytest.importorskip("transformers")
    export = run_command("to_hf", "--checkpoint", stage / "checkpoints", "--out",
                         tmp_path / "hf")
    assert export.returncode == 0, export.stderr[-3000:]
    model, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf",
                                                                    output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_resuming_after_a_data_setting_changed_is_refused(six_steps):
    """The dataset is rebuilt under the new setting; its saved data position would mean
    nothing there (issue #24: the run used to resume on it, rc 0)."""
    workdir, manifest, _ = six_steps
    proc = run_cli(workdir, manifest, "--set=data.max_text_chars=60", steps=9)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, out[-3000:]
    assert "was trained on another prepared dataset" in out and "data.*" in out, out[-3000:]
    assert "alignment step 7/9" not in out
    assert checkpoint.resolve(workdir / "alignment" / "checkpoints")[1] == 6


def test_killed_run_resumes_to_the_same_losses(spoken_corpus, tmp_path):
    _, manifest, _ = spoken_corpus
    finish(run_cli(tmp_path / "straight", manifest, steps=8))
    expected = losses(tmp_path / "straight" / "alignment")

    proc = run_cli(tmp_path / "killed", manifest, steps=8)
    ckpt = tmp_path / "killed" / "alignment" / "checkpoints" / "3"
    deadline = time.time() + 300
    while not (ckpt / "params").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = finish(run_cli(tmp_path / "killed", manifest, steps=8))
    assert "resuming from step" in out
    logged = [row["step"] for row in read_metrics(tmp_path / "killed" / "alignment")]
    assert logged == list(range(1, 9))  # one line per step, none repeated by the resume
    resumed = losses(tmp_path / "killed" / "alignment")
    assert sorted(resumed) == sorted(expected)
    np.testing.assert_allclose([resumed[s] for s in sorted(expected)],
                               [expected[s] for s in sorted(expected)], rtol=1e-5)


def test_shrunken_qwen2_0_5b_config_trains_on_8_devices(spoken_corpus, tmp_path):
    _, manifest, _ = spoken_corpus
    cfg = override(get_config("qwen2_0_5b_shrunk"), f"data.source=manifest:{manifest}")
    cfg = override(override(cfg, "data.num_workers=0"), "speech.fit_max_utterances=64")
    assert jax.device_count() == 8 and cfg.model.dtype == "bfloat16" and cfg.model.remat == "full"
    prepared = prepare_speech_text(cfg, str(tmp_path))
    source = data_source(prepared.data_dir, prepared.config_name, "train", cfg.layout)

    def make_data():
        return alignment_pipeline(source, layout=cfg.layout, seq_len=cfg.train.seq_len,
                                  batch_size=cfg.train.batch_size, asr_fraction=0.5,
                                  seed=0, num_packing_bins=4)

    result = train_stage(cfg, alignment_plan(cfg), str(tmp_path / "alignment"), make_data)
    assert result.trained_steps == 2
    rows = read_metrics(str(tmp_path / "alignment"))
    assert all(np.isfinite(r["loss"]) for r in rows)
    embed = result.placed.params["embed"]
    assert len(embed.sharding.device_set) == 8 and embed.sharding.spec[1] == "fsdp"


def test_memorises_32_utterances(tmp_path):
    """On 32 training utterances the tiny model reaches ASR CER <= 0.1 on those utterances: a
    wrong loss mask, layout or packing cannot pass this."""
    cfg = get_config("embedded")
    for assignment in ("data.max_utterances=48", "data.validation_fraction=0",
                       "data.test_fraction=0", "data.num_workers=0", "train.steps=300",
                       "train.checkpoint_every=300", "train.log_every=50", "data.asr_fraction=0.8",
                       "optimizer.warmup_steps=20", "eval.max_examples=32"):
        cfg = override(cfg, assignment)
    prepared = prepare_speech_text(cfg, str(tmp_path))
    source = data_source(prepared.data_dir, prepared.config_name, "train", cfg.layout)
    records = [source[i] for i in range(min(len(source), 32))]
    assert len(records) == 32

    def make_data():
        return alignment_pipeline(records, layout=cfg.layout,
                                  seq_len=cfg.train.seq_len, batch_size=cfg.train.batch_size,
                                  asr_fraction=cfg.data.asr_fraction, seed=0,
                                  num_packing_bins=cfg.data.num_packing_bins)

    start = time.perf_counter()
    result = train_stage(cfg, alignment_plan(cfg), str(tmp_path / "alignment"), make_data)
    hyps = transcribe(result.placed, cfg.layout,
                      [r["speech_ids"] for r in records], max_new=110, batch_size=16)
    score = cer([r["text"].decode() for r in records], hyps)
    print(f"memorisation: {cfg.train.steps} steps in {time.perf_counter() - start:.0f} s, "
          f"CER {score:.3f} on the 32 training utterances")
    assert score <= 0.1, list(zip([r["text"] for r in records[:4]], hyps[:4]))
    assert checkpoint.resolve(tmp_path / "alignment" / "checkpoints")[1] == 300


@pytest.fixture(scope="module")
def run_from_hf(spoken_corpus, tmp_path_factory):
    """A Hugging Face folder (hf/), its import (imported/) and a two-step alignment run
    initialised from the import (alignment/): a workdir as a user who fine-tunes has it."""
    transformers = pytest.importorskip("transformers")
    import dataclasses

    from omniflatten_jax.export.from_hf import import_hf
    from tests.helpers import small_config

    tmp_path = tmp_path_factory.mktemp("from_hf")
    _, manifest, _ = spoken_corpus
    cfg = small_config(f"manifest:{manifest}", steps=2, batch_size=8)  # divides over 8 devices
    m = cfg.model
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=256, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads, rope_theta=m.rope_theta, rms_norm_eps=m.rms_norm_eps,
        tie_word_embeddings=True))
    hf.save_pretrained(tmp_path / "hf")
    import_hf(str(tmp_path / "hf"), str(tmp_path / "imported"), num_speech_codes=32,
              text_tokenizer="bytes")
    imported, _, _ = checkpoint.load_params(tmp_path / "imported")
    prepared = prepare_speech_text(cfg, str(tmp_path))
    source = data_source(prepared.data_dir, prepared.config_name, "train", cfg.layout)

    def make_data():
        return alignment_pipeline(source, layout=cfg.layout, seq_len=cfg.train.seq_len,
                                  batch_size=cfg.train.batch_size, asr_fraction=0.5, seed=0,
                                  num_packing_bins=4)

    # A run with another architecture refuses the checkpoint, naming the difference.
    wide = dataclasses.replace(cfg, model=dataclasses.replace(m, intermediate_size=256))
    with pytest.raises(ValueError, match="intermediate_size"):
        train_stage(wide, alignment_plan(wide), str(tmp_path / "wide"), make_data,
                    init_from=str(tmp_path / "imported"))
    result = train_stage(cfg, alignment_plan(cfg), str(tmp_path / "alignment"), make_data,
                         init_from=str(tmp_path / "imported"))
    return tmp_path, imported, result


def test_init_from_a_hugging_face_import(run_from_hf):
    """`--init_from` a checkpoint written by export.from_hf: params only, lineage kept."""
    _, imported, result = run_from_hf
    kinds = [record["kind"] for record in result.meta.lineage]
    assert kinds == ["hf_import", "init_from", "train"]
    # Two small steps moved the imported weights, but only a little: training started there.
    start = np.asarray(imported["embed"])
    end = np.asarray(jax.device_get(result.placed.params["embed"]))
    assert 0 < np.abs(end - start).max() < 0.05


def test_export_or_import_with_overwrite_into_a_training_run_is_refused(run_from_hf):
    """`--overwrite` replaces an old export or import, never a training run's checkpoints
    nor the folder being read (issue #24: to_hf into its own checkpoints folder deleted the
    steps, then failed)."""
    from tests.helpers import command_error, command_ok

    root, _, _ = run_from_hf
    ckpts = root / "alignment" / "checkpoints"
    steps = sorted(os.listdir(ckpts))
    hf = ["--hf_dir", root / "hf", "--text_tokenizer=bytes", "--num_speech_codes=32"]
    for name, args, said in (
            ("to_hf", ["--checkpoint", ckpts, "--out", ckpts], "holds the input being read"),
            ("to_hf", ["--checkpoint", ckpts / steps[-1], "--out", ckpts],
             "holds the input being read"),
            ("to_hf", ["--checkpoint", root / "imported", "--out", ckpts],
             "holds a training run's checkpoints"),
            ("from_hf", [*hf, "--out", ckpts], "holds a training run's checkpoints"),
            ("from_hf", [*hf, "--out", root / "alignment"], "holds a training run's checkpoints"),
            ("from_hf", [*hf, "--out", root], "holds the input being read")):
        err = command_error(name, [*args, "--overwrite"])
        assert said in err and "choose another --out" in err, err
    assert sorted(os.listdir(ckpts)) == steps
    assert checkpoint.resolve(ckpts)[1] == 2
    # An earlier import or export is still replaced.
    command_ok("from_hf", [*hf, "--out", root / "imported", "--overwrite"])
    command_ok("to_hf", ["--checkpoint", ckpts, "--out", root / "export"])
    command_ok("to_hf", ["--checkpoint", ckpts, "--out", root / "export", "--overwrite"])



def test_a_resumed_run_leaves_one_metrics_line_per_step(tmp_path):
    """A run killed after logging steps 1-5 with its checkpoint at 3, then resumed: the file
    keeps 1-3 and the resumed 4-5, not 1-5 and 4-5 (a torn last line is dropped)."""
    from omniflatten_jax.training.metrics import MetricsWriter

    killed = MetricsWriter(str(tmp_path))
    for step in range(1, 6):
        killed.write(step, {"loss": float(step)})
    killed.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # killed mid-line
    resumed = MetricsWriter(str(tmp_path), resumed_from=3)
    for step in (4, 5):
        resumed.write(step, {"loss": step + 0.5})
    resumed.close()
    rows = read_metrics(str(tmp_path))
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.5),
                                                      (5, 5.5)]
    # TensorBoard purges earlier files' events from a restart marker's step on (checked with
    # TensorBoard's EventAccumulator: it then shows 1-3 and 4.5, 5.5): each run marks its first.
    starts = [[e.step for e in events(path) if e.HasField("session_log")]
              for path in sorted((tmp_path / "tensorboard").iterdir())]
    assert starts == [[1], [4]]


def events(path):
    """The events of a TensorBoard event file (TFRecord framing: length, its CRC, the event,
    its CRC)."""
    import struct

    from tensorboardX.proto import event_pb2

    data, found, at = path.read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        found.append(event_pb2.Event.FromString(data[at + 12:at + 12 + length]))
        at += 12 + length + 4
    return found
