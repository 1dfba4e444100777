"""The duplex command on a short synthesised recording: files, durations, events, errors."""

import json
import os

import jax
import numpy as np
import pytest
import soundfile

from omniflatten_jax import checkpoint
from omniflatten_jax.config import FlattenConfig, MelConfig, to_dict
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.model import transformer
from omniflatten_jax.speech.audio import resample
from omniflatten_jax.speech.kmeans import KMeansMelTokenizer
from tests.helpers import SMALL_MODEL, run_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUT = TokenLayout("bytes", 256, 32)
FLATTEN = FlattenConfig(text_chunk=8)


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory):
    """A duplex_3 stage folder as experiments/run.py leaves it: checkpoints that describe
    themselves, with a speech tokenizer fitted on real synthesised speech stored inside."""
    from data_pipelines.synth.espeak import Synthesizer, Voice

    root = tmp_path_factory.mktemp("duplex_3")
    synth = Synthesizer()
    waves = [resample(u.audio, u.sample_rate, 16_000) for u in
             (synth.speak(t, Voice("en-us")) for t in ("good morning", "see you tomorrow"))]
    tokenizer = KMeansMelTokenizer.fit(waves, MelConfig(), LAYOUT.num_speech_codes, seed=0)
    tokenizer.save(str(root / "tokenizer.npz"))
    data = (root / "tokenizer.npz").read_bytes()
    model = transformer(SMALL_MODEL, LAYOUT.vocab_size)
    meta = checkpoint.CheckpointMeta(SMALL_MODEL, LAYOUT, stage="duplex_3", flatten=FLATTEN,
                                     context_chunks=4,
                                     speech_tokenizer_sha256=checkpoint.sha256(data))
    checkpoint.save_params(root / "checkpoints", 1, model.init(jax.random.key(0)), meta, data)
    # The same weights as a checkpoint from before stage descriptions, and its inference.json.
    checkpoint.save_params(root / "old" / "checkpoints", 1, model.init(jax.random.key(0)),
                           checkpoint.CheckpointMeta(SMALL_MODEL, LAYOUT))
    settings = {"stage": "duplex_3", "flatten": to_dict(FLATTEN),
                "speech_tokenizer": str(root / "tokenizer.npz"), "context_chunks": 4}
    (root / "old" / "inference.json").write_text(json.dumps(settings))
    return root


def run_cli(*args):
    return run_command("duplex", *args)


def test_a_recording_streams_through_the_model(stage_dir, tmp_path):
    from data_pipelines.synth.espeak import Synthesizer, Voice

    utt = Synthesizer().speak("hello, could you tell me what time it is", Voice("en+f3"))
    # Not the tokenizer's format: stereo FLAC at 44.1 kHz, with a second of silence after.
    wave = np.concatenate([resample(utt.audio, utt.sample_rate, 44_100), np.zeros(44_100)])
    path = tmp_path / "user.flac"
    soundfile.write(path, np.stack([wave, 0.5 * wave], axis=1), 44_100)
    out = tmp_path / "out"
    result = run_cli("--checkpoint", str(stage_dir / "checkpoints"), "--input", str(path),
                     "--out_dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"output.wav", "assistant_text.txt", "assistant_text.json", "events.json",
            "timeline.png"} <= set(os.listdir(out))
    audio, rate = soundfile.read(out / "output.wav")
    seconds = len(wave) / 44_100
    assert rate == 16_000 and abs(len(audio) / rate - seconds) <= 1 / 16_000
    report = json.loads((out / "events.json").read_text())
    n_chunks = int(np.ceil(seconds * 25 / 10))
    assert report["chunks"] == n_chunks and report["latency_ms"]["mean"] > 0
    assert report["context_slides"] >= 1  # 4-chunk context over a longer recording
    # Turns alternate, lie inside the recording, and the output is silent outside them.
    kinds = [e["event"] for e in report["events"]]
    assert kinds == ["took_turn", "yielded"] * (len(kinds) // 2)
    speaking = np.zeros(len(audio), bool)
    times = [e["time_s"] for e in report["events"]]
    for start, end in zip(times[::2], times[1::2]):
        assert 0 <= start < end <= seconds + 0.4
        speaking[int(round(start * rate)):int(round(end * rate))] = True
    assert not np.any(audio[~speaking])
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for turn in json.loads((out / "assistant_text.json").read_text()):
        assert 0 <= turn["start_s"] < turn["end_s"] <= n_chunks * 0.4 + 1e-6
    assert "real-time factor" in result.stdout


def test_unreadable_input_is_a_clear_error(stage_dir, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio")
    result = run_cli("--checkpoint", str(stage_dir / "checkpoints"), "--input", str(bad),
                     "--out_dir", str(tmp_path / "out"))
    assert result.returncode != 0
    assert f"{bad}: cannot be read as audio" in result.stderr
    assert "Traceback" not in result.stderr
    # A readable input (the input is checked before the checkpoint, which is slower to read).
    soundfile.write(tmp_path / "user.wav", np.zeros(16_000, np.float32), 16_000)
    missing = run_cli("--checkpoint", str(tmp_path / "nowhere"), "--input",
                      str(tmp_path / "user.wav"), "--out_dir", str(tmp_path / "out"))
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_a_checkpoint_from_before_stage_descriptions_says_how_to_upgrade(stage_dir, tmp_path):
    from data_pipelines.synth.espeak import Synthesizer, Voice
    from omniflatten_jax.speech.audio import save_audio

    utt = Synthesizer().speak("good evening", Voice("en-us"))
    save_audio(tmp_path / "user.wav", utt.audio, utt.sample_rate)
    old = stage_dir / "old" / "checkpoints"
    result = run_cli("--checkpoint", str(old), "--input", str(tmp_path / "user.wav"),
                     "--out_dir", str(tmp_path / "out"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "python experiments/upgrade_checkpoint.py" in result.stderr
    upgrade = run_command("upgrade_checkpoint", "--checkpoint", old, "--out", tmp_path / "new",
                          "--settings", stage_dir / "old" / "inference.json")
    assert upgrade.returncode == 0, upgrade.stderr[-3000:]
    meta = checkpoint.load_meta(tmp_path / "new")
    assert (meta.stage, meta.flatten, meta.context_chunks) == ("duplex_3", FLATTEN, 4)
    assert checkpoint.load_speech_tokenizer_bytes(tmp_path / "new") == (
        stage_dir / "tokenizer.npz").read_bytes()
    result = run_cli("--checkpoint", str(tmp_path / "new"), "--input",
                     str(tmp_path / "user.wav"), "--out_dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]


def test_upgrade_refuses_a_relabel_an_unknown_stage_and_a_full_out_folder(stage_dir, tmp_path):
    """Issue #24: upgrade relabelled described steps, took any stage name, and printed "wrote"
    into a non-empty --out while the old step stayed."""
    from tests.helpers import command_error, command_ok

    old, settings = stage_dir / "old" / "checkpoints", stage_dir / "old" / "inference.json"
    err = command_error("upgrade_checkpoint", [
        "--checkpoint", stage_dir / "checkpoints", "--out", tmp_path / "relabelled",
        "--stage", "duplex_2", "--speech_tokenizer", stage_dir / "tokenizer.npz",
        "--context_chunks", "4"])
    assert "already describes itself as a duplex_3 checkpoint" in err
    unknown = tmp_path / "inference.json"
    unknown.write_text(json.dumps(json.loads(settings.read_text()) | {"stage": "duplex_5"}))
    err = command_error("upgrade_checkpoint", ["--checkpoint", old, "--out", tmp_path / "new",
                                               "--settings", unknown])
    assert "stage 'duplex_5' does not exist; choose one of alignment" in err
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("an earlier upgrade")
    args = ["--checkpoint", old, "--out", full, "--settings", settings]
    assert f"--out {full} is not empty" in command_error("upgrade_checkpoint", args)
    assert os.listdir(full) == ["keep.txt"]
    command_ok("upgrade_checkpoint", [*args, "--overwrite"])
    assert checkpoint.load_meta(full).stage == "duplex_3" and not (full / "keep.txt").exists()
    err = command_error("upgrade_checkpoint", ["--checkpoint", old, "--out", old.parent,
                                               "--settings", settings, "--overwrite"])
    assert "holds the input being read" in err and checkpoint.resolve(old)[1] == 1


def test_an_export_round_trip_keeps_the_description_and_tokenizer(stage_dir, tmp_path):
    from omniflatten_jax.export.from_hf import import_hf
    from omniflatten_jax.export.to_hf import export_hf

    export_hf(str(stage_dir / "checkpoints"), str(tmp_path / "hf"))
    tokenizer = (stage_dir / "tokenizer.npz").read_bytes()
    assert (tmp_path / "hf" / "speech_tokenizer.npz").read_bytes() == tokenizer
    import_hf(str(tmp_path / "hf"), str(tmp_path / "back"))
    meta = checkpoint.load_meta(tmp_path / "back")
    assert (meta.stage, meta.flatten, meta.context_chunks) == ("duplex_3", FLATTEN, 4)
    assert [r["kind"] for r in meta.lineage][-1] == "hf_import"
    assert checkpoint.load_speech_tokenizer_bytes(tmp_path / "back") == tokenizer
