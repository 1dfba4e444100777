"""Nothing lost, nothing silently wrong (issue #11): the duplex command and the Hugging Face
export/import refuse bad weights and bad folders in one line, before any slow work, write
their outputs whole or not at all, and the duplex command's memory does not grow with the
recording. Real commands (as a user runs them) on real tiny checkpoints."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
import soundfile
from safetensors.numpy import load_file, save_file

from omniflatten_jax import checkpoint
from omniflatten_jax.checkpoint import staging
from omniflatten_jax.export import to_hf
from omniflatten_jax.inference.recording import AssistantAudio
from omniflatten_jax.inference.session import LatencyStats
from omniflatten_jax.inference.timeline import Envelope
from omniflatten_jax.speech import load_speech_tokenizer
from omniflatten_jax.speech.audio import resample
from tests.helpers import command_error, command_ok, run_command
from tests.test_duplex_cli import LAYOUT, ROOT, stage_dir  # noqa: F401  (the shared fixture)

RATE = 16_000


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """Two seconds of synthesised speech and one of silence, as a 16 kHz wav."""
    from data_pipelines.synth.espeak import Synthesizer, Voice

    utt = Synthesizer().speak("hello there how are you", Voice("en+m3"))
    wave = np.concatenate([resample(utt.audio, utt.sample_rate, RATE), np.zeros(RATE)])
    path = tmp_path_factory.mktemp("audio") / "user.wav"
    soundfile.write(path, wave, RATE)
    return path


@pytest.fixture(scope="module")
def nan_checkpoint(stage_dir, tmp_path_factory):  # noqa: F811
    """The stage's checkpoint with one tensor diverged to NaN (as a run that blew up)."""
    params, meta, where = checkpoint.load_params(stage_dir / "checkpoints")
    params = jax.tree.map(np.array, params)
    params["layers"][0]["mlp"]["up"]["kernel"][:] = np.nan
    out = tmp_path_factory.mktemp("diverged") / "checkpoints"
    checkpoint.save_params(out, 1, params, meta, checkpoint.load_speech_tokenizer_bytes(where))
    return out


@pytest.fixture(scope="module")
def hf_folders(stage_dir, tmp_path_factory):  # noqa: F811
    """An export of the stage (A), the same with other weights (B), and with a NaN (bad)."""
    root = tmp_path_factory.mktemp("hf")
    to_hf.export_hf(str(stage_dir / "checkpoints"), str(root / "a"))
    tensors = load_file(root / "a" / "model.safetensors")
    for name, change in (("b", lambda x: x * 2), ("bad", lambda x: x * np.nan)):
        shutil.copytree(root / "a", root / name)
        key = "model.layers.0.mlp.up_proj.weight"
        save_file(tensors | {key: change(tensors[key])}, root / name / "model.safetensors",
                  metadata={"format": "pt"})
    return root


def leftovers(folder) -> list[str]:
    return [n for n in os.listdir(folder) if ".partial-" in n or ".old-" in n]


# --- 1: non-finite weights --------------------------------------------------------------

def test_to_hf_refuses_a_diverged_checkpoint_in_one_line(nan_checkpoint, tmp_path):
    result = run_command("to_hf", "--checkpoint", str(nan_checkpoint),
                        "--out", str(tmp_path / "hf"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "NaN" in result.stderr
    assert f"checkpoint {nan_checkpoint}/1 holds NaN" in result.stderr
    assert "['layers'][0]['mlp']['up']['kernel']" in result.stderr
    assert not (tmp_path / "hf").exists() and not leftovers(tmp_path)


def test_duplex_refuses_a_diverged_checkpoint(nan_checkpoint, recording, tmp_path):
    err = command_error("duplex", ["--checkpoint", str(nan_checkpoint), "--input",
                                   str(recording), "--out_dir", str(tmp_path / "out")])
    assert f"checkpoint {nan_checkpoint}/1 holds NaN" in err
    assert not os.listdir(tmp_path / "out")  # no NUL-byte text, no output at all


def test_from_hf_refuses_non_finite_weights(hf_folders, tmp_path):
    err = command_error("from_hf", ["--hf_dir", str(hf_folders / "bad"), "--out",
                                    str(tmp_path / "ckpt")])
    assert f"{hf_folders / 'bad'} (Hugging Face weights) holds NaN" in err
    assert "mlp" in err and not (tmp_path / "ckpt").exists() and not leftovers(tmp_path)


# --- 2: whole folders or none; --overwrite ---------------------------------------------------

def test_from_hf_into_an_existing_folder_refuses_or_replaces(hf_folders, tmp_path):
    out = tmp_path / "ckpt"
    command_ok("from_hf", ["--hf_dir", str(hf_folders / "a"), "--out", str(out)])
    first = np.asarray(checkpoint.load_params(out)[0]["layers"][0]["mlp"]["up"]["kernel"])
    err = command_error("from_hf", ["--hf_dir", str(hf_folders / "b"), "--out", str(out)])
    assert f"--out {out} is not empty" in err and "--overwrite" in err
    kept = checkpoint.load_params(out)[0]["layers"][0]["mlp"]["up"]["kernel"]
    np.testing.assert_array_equal(np.asarray(kept), first)
    # The folder is checked before the weights are read: bad weights, same refusal.
    err = command_error("from_hf", ["--hf_dir", str(hf_folders / "bad"), "--out", str(out)])
    assert "is not empty" in err
    wrote = command_ok("from_hf", ["--hf_dir", str(hf_folders / "b"), "--out", str(out),
                                   "--overwrite"])
    assert f"wrote {out}/0" in wrote
    replaced = checkpoint.load_params(out)[0]["layers"][0]["mlp"]["up"]["kernel"]
    np.testing.assert_allclose(np.asarray(replaced), 2 * first, rtol=1e-6)
    assert os.listdir(out) == ["0"] and not leftovers(tmp_path)


def test_to_hf_into_an_existing_folder_refuses_or_replaces(stage_dir, nan_checkpoint,  # noqa: F811
                                                           tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"an older export")
    for ckpt in (stage_dir / "checkpoints", nan_checkpoint):  # the folder is checked first
        err = command_error("to_hf", ["--checkpoint", str(ckpt), "--out", str(out)])
        assert f"--out {out} is not empty" in err and "--overwrite" in err
    assert os.listdir(out) == ["stale.bin"]
    command_ok("to_hf", ["--checkpoint", str(stage_dir / "checkpoints"), "--out", str(out),
                         "--overwrite"])
    assert {"config.json", "model.safetensors", "speech_tokenizer.npz"} <= set(os.listdir(out))
    assert "stale.bin" not in os.listdir(out) and not leftovers(tmp_path)


def test_a_failed_write_leaves_the_old_folder_and_no_partial_one(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with staging.staged_folder(str(out), overwrite=True) as folder:
            (tmp_path / folder / "new.txt").write_text("half")
            assert os.path.dirname(folder) == str(tmp_path)  # beside it: one rename
            raise RuntimeError("disk full")
    assert os.listdir(out) == ["old.txt"] and not leftovers(tmp_path)


# --- 3 and 6: cheap checks first, one line each ------------------------------------------------

def test_duplex_checks_the_out_dir_and_input_before_the_checkpoint(recording, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    missing = str(tmp_path / "no_checkpoint")
    err = command_error("duplex", ["--checkpoint", missing, "--input", str(recording),
                                   "--out_dir", str(blocker / "out")])
    assert f"--out_dir {blocker / 'out'} cannot be written" in err and "choose" in err
    err = command_error("duplex", ["--checkpoint", missing, "--input", str(blocker),
                                   "--out_dir", str(tmp_path / "out")])
    assert f"{blocker}: cannot be read as audio" in err and "wav, flac" in err
    err = command_error("duplex", ["--checkpoint", missing, "--input", str(recording),
                                   "--out_dir", str(tmp_path / "out")])
    assert f"checkpoint {missing} does not exist" in err


def test_errors_are_one_line_and_verbose_shows_the_traceback(stage_dir, recording,  # noqa: F811
                                                             tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(stage_dir / "checkpoints", damaged)
    (damaged / "1" / "meta" / "metadata").write_text("not json")
    args = ["--checkpoint", str(damaged), "--input", str(recording), "--out_dir",
            str(tmp_path / "out")]
    assert str(damaged / "1" / "meta") in command_error("duplex", args)
    err = run_command("duplex", *args, "--verbose").stderr
    assert "Traceback (most recent call last)" in err, err
    assert err.strip().splitlines()[-1].startswith("error: ") and "cannot be read" in err
    err = command_error("to_hf", ["--checkpoint", str(tmp_path / "none"), "--out",
                                  str(tmp_path / "hf")])
    assert f"checkpoint {tmp_path / 'none'} does not exist" in err
    err = command_error("from_hf", ["--hf_dir", str(tmp_path), "--out", str(tmp_path / "c")])
    assert f"{tmp_path}/config.json not found" in err


# --- 4 and 5: streaming outputs, flat memory, no warnings ----------------------------------------

def peak_rss_mb(args, log) -> float:
    """Runs the duplex command; returns its own peak resident memory (this child's only)."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "experiments/duplex.py", *args], stdout=out,
                                stderr=out, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, open(log).read()[-3000:]
    return usage.ru_maxrss / 1024


def test_memory_does_not_grow_with_the_recording(stage_dir, recording, tmp_path):  # noqa: F811
    """Before streaming, the command held every sample (and plotted each): ~87 MB more per
    minute of input. Now 2 minutes peak within 40 MB of 6 seconds (measured: +13 MB from 1 to
    10 minutes)."""
    wave, _ = soundfile.read(recording, dtype="float32")
    long = np.tile(np.concatenate([wave, np.zeros(RATE, np.float32)]), 40)[:120 * RATE]
    soundfile.write(tmp_path / "long.wav", long, RATE)
    peaks = {}
    for name in ("user", "long"):
        path = recording if name == "user" else tmp_path / "long.wav"
        peaks[name] = peak_rss_mb(["--checkpoint", str(stage_dir / "checkpoints"), "--input",
                                   str(path), "--out_dir", str(tmp_path / name)],
                                  tmp_path / f"{name}.log")
        log = (tmp_path / f"{name}.log").read_text()
        assert "Warning" not in log and "warn" not in log, log  # (5) stderr is clean
    assert peaks["long"] - peaks["user"] < 40, peaks
    audio, rate = soundfile.read(tmp_path / "long" / "output.wav")
    assert rate == RATE and len(audio) == len(long)  # streamed, exactly the input's length
    report = json.loads((tmp_path / "long" / "events.json").read_text())
    assert report["chunks"] == 120 * 25 // 10 and report["input_seconds"] == 120.0
    assert (tmp_path / "long" / "timeline.png").read_bytes()[:4] == b"\x89PNG"


def test_short_spoken_stretches_decode_without_a_librosa_warning(stage_dir, tmp_path):  # noqa: F811
    """A trained model emits 1-2 frame blips; Griffin-Lim on 40-80 ms of signal made librosa
    warn "n_fft=1024 is too large for input signal" on every run. Each blip is written in
    place, the file exactly as long as asked, and silent elsewhere."""
    tokenizer = load_speech_tokenizer(stage_dir / "tokenizer.npz")
    silent, code = LAYOUT.special("<silent_speech>"), LAYOUT.speech_ids(np.array([5]))[0]
    ids = np.full(40, silent)
    ids[[3, 10, 11, 30]] = code  # runs of 1, 2 and 1 frames
    events = []
    writer = AssistantAudio(str(tmp_path / "out.wav"), RATE, 25.0, tokenizer, LAYOUT,
                            lambda kind, frame: events.append((kind, frame)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for lo in range(0, 40, 10):
            writer.add(ids[lo:lo + 10])
        assert writer.close(40 * 640 - 100) == 40 * 640 - 100
    assert not caught, [str(w.message) for w in caught]
    assert events == [("took_turn", 3), ("yielded", 4), ("took_turn", 10), ("yielded", 12),
                      ("took_turn", 30), ("yielded", 31)]
    audio, _ = soundfile.read(tmp_path / "out.wav")
    spoken = np.zeros(len(audio), bool)
    for start, end in ((3, 4), (10, 12), (30, 31)):
        spoken[start * 640:end * 640] = True
        assert np.abs(audio[start * 640:end * 640]).max() > 0.01
    assert not np.any(audio[~spoken])


def test_latency_and_envelope_summaries_match_the_full_data():
    """The online summaries that keep memory flat agree with computing on every value."""
    values = np.random.default_rng(0).lognormal(1.0, 0.6, 5000)
    stats = LatencyStats()
    for v in values:
        stats.add(float(v))
    assert stats.count == 5000 and stats.max_ms == values.max()
    assert abs(stats.mean_ms - values.mean()) < 1e-9
    for q in (50, 95):
        exact = np.percentile(values, q, method="inverted_cdf")
        assert abs(stats.percentile(q) / exact - 1) < 0.005
    env = Envelope(columns=16)
    for piece in np.array_split(values, 37):
        env.add(piece)
    edges, lo, hi, mean = env.bins()
    assert len(lo) <= 32 and edges[-1] == 5000
    for i in range(len(lo)):
        part = values[int(edges[i]):int(edges[i + 1])]
        assert (lo[i], hi[i]) == (np.float32(part.min()), np.float32(part.max()))
        assert abs(mean[i] - part.astype(np.float32).mean()) < 1e-3
