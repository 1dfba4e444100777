"""A duplex checkpoint's stored decoding policy is what the duplex command and the FDB harness
decode with; flags change single fields of it; the operating curve scores FDB's rules."""

import json
import os
import shutil

import numpy as np
import pytest
import soundfile

from omniflatten_jax import checkpoint
from omniflatten_jax.config import ConfigError, DecodingPolicy, to_dict
from omniflatten_jax.evaluation import operating_curve as oc
from tests.helpers import run_command
from tests.test_duplex_cli import ROOT, stage_dir  # noqa: F401  (the module's fixture)

MUTE = DecodingPolicy(onset_threshold=1.0)  # P(speak) never reaches 1: never starts


def run_module(name, *args):
    return run_command(name, *args)


@pytest.fixture(scope="module")
def mute_checkpoint(stage_dir, tmp_path_factory):  # noqa: F811
    """The random-init duplex_3 checkpoint (which speaks under the default policy) with a
    policy stored that never starts speaking."""
    copy = tmp_path_factory.mktemp("mute") / "checkpoints"
    shutil.copytree(stage_dir / "checkpoints", copy)
    assert checkpoint.load_meta(copy).decoding is None
    step = str(copy / "1")
    stored = checkpoint.store_decoding(step, MUTE)
    assert checkpoint.load_meta(copy) == stored and stored.decoding == MUTE
    assert checkpoint.load_meta(stage_dir / "checkpoints").stage == stored.stage
    return copy


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    from data_pipelines.synth.espeak import Synthesizer, Voice

    utt = Synthesizer().speak("could you tell me a story", Voice("en+f3"))
    wave = np.concatenate([utt.audio, np.zeros(utt.sample_rate)])
    path = tmp_path_factory.mktemp("rec") / "user.wav"
    soundfile.write(path, wave, utt.sample_rate)
    return path


def test_the_duplex_command_decodes_with_the_stored_policy(mute_checkpoint, recording,
                                                          tmp_path):
    out = tmp_path / "stored"
    result = run_module("duplex", "--checkpoint",
                        str(mute_checkpoint), "--input", str(recording), "--out_dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "events.json").read_text())
    assert report["decoding"] == to_dict(MUTE)
    assert report["events"] == []
    assert not np.any(soundfile.read(out / "output.wav")[0])
    # A flag changes one field of it, and the same weights speak.
    out = tmp_path / "flag"
    result = run_module("duplex", "--checkpoint",
                        str(mute_checkpoint), "--input", str(recording), "--out_dir", str(out),
                        "--decoding", "onset_threshold=0.5", "--temperature", "0.7")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "events.json").read_text())
    assert report["decoding"] == to_dict(DecodingPolicy(
        onset_threshold=0.5, text_temperature=0.7, speech_temperature=0.7))
    assert report["events"][0]["event"] == "took_turn"
    assert np.any(soundfile.read(out / "output.wav")[0])
    bad = run_module("duplex", "--checkpoint", str(mute_checkpoint),
                     "--input", str(recording), "--out_dir", str(tmp_path / "bad"),
                     "--decoding", "onset_threshold=2")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "onset_threshold must be in [0, 1], got 2.0" in bad.stderr


def test_the_fdb_harness_decodes_with_the_stored_policy(mute_checkpoint, recording,
                                                       tmp_path):
    sample = tmp_path / "pause_handling" / "1"
    sample.mkdir(parents=True)
    shutil.copy(recording, sample / "input.wav")
    (sample / "pause.json").write_text(json.dumps([{"text": "[PAUSE]",
                                                    "timestamp": [0.5, 1.0]}]))
    result = run_module("fdb", "--checkpoint", str(mute_checkpoint),
                        "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    source = json.loads((sample / "output_source.json").read_text())
    assert source["decoding"] == to_dict(MUTE)
    assert not np.any(soundfile.read(sample / "output.wav")[0])
    assert "onset 1, stop 0.5" in result.stderr  # the log says how it decoded
    # Another policy is another model's output: streamed again, not kept.
    again = run_module("fdb", "--checkpoint", str(mute_checkpoint),
                       "--root", str(tmp_path), "--decoding", "onset_threshold=0.5")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((sample / "output_source.json").read_text())["decoding"][
        "onset_threshold"] == 0.5
    assert np.any(soundfile.read(sample / "output.wav")[0])


def test_a_policy_field_is_validated_by_name():
    with pytest.raises(ConfigError, match="stop_threshold must be in"):
        DecodingPolicy(stop_threshold=-0.1)
    with pytest.raises(ConfigError, match="speak_rule must be one of"):
        DecodingPolicy(speak_rule="greedy")


def frames(*spans, n=100):
    speaking = np.zeros(n, bool)
    for a, b in spans:
        speaking[a:b] = True
    return speaking


def test_speech_tokens_score_by_fdbs_rules():
    """Frames at 25 Hz: a stretch of 20 frames is 0.8 s (< 1 s, 3 pseudo-words: no turn),
    30 frames 1.2 s (a turn); latency from the reference time to the first speech."""
    rate = 25.0
    assert oc.stretches(frames((3, 5), (10, 12))) == [(3, 5), (10, 12)]
    assert oc.clip_score("pause_handling", frames(), None, rate).tor == 0
    assert oc.clip_score("pause_handling", frames((10, 30)), None, rate).tor == 0
    assert oc.clip_score("pause_handling", frames((10, 40)), None, rate).tor == 1
    turn = oc.clip_score("smooth_turn_taking", frames((50, 80)), 1.6, rate)
    assert turn.tor == 1 and turn.latency_s == pytest.approx(0.4)
    # Interruption: only the output after the interruption's end counts.
    assert oc.clip_score("user_interruption", frames((0, 40)), 1.6, rate).tor == 0
    late = oc.clip_score("user_interruption", frames((0, 40), (50, 90)), 1.6, rate)
    assert late.tor == 1 and late.latency_s == pytest.approx(0.4)
    # Backchannel: a short blip is a backchannel (TOR 0), a long stretch a turn.
    assert oc.clip_score("backchannel", frames((10, 15)), None, rate).tor == 0
    assert oc.clip_score("backchannel", frames((10, 15), (30, 70)), None, rate).tor == 1
    clips = [oc.Clip("pause_handling", np.zeros(100, np.int32), frames()),
             oc.Clip("smooth_turn_taking", np.zeros(100, np.int32), frames(), 1.6)]
    result = oc.score(clips, [frames(), frames((50, 80))], rate)
    assert result["pause_handling"]["tor"] == 0 and result["smooth_turn_taking"]["tor"] == 1
    assert result["spoke"] == 0.5 and oc.separation(result) == 1.0


def test_the_chosen_point_separates_best():
    point = lambda t, tt, pause: {"onset_threshold": t,  # noqa: E731
                                  "smooth_turn_taking": {"tor": tt, "latency_s": 0.3},
                                  "pause_handling": {"tor": pause}, "spoke": 1.0}
    points = [point(0.1, 1.0, 0.9), point(0.3, 0.8, 0.2), point(0.5, 0.1, 0.0)]
    assert oc.choose(points) == 1
    mute = [{"onset_threshold": t, "smooth_turn_taking": {"tor": 0.0, "latency_s": float("nan")},
             "pause_handling": {"tor": 0.0}, "spoke": 0.0} for t in (0.3, 0.5, 0.7)]
    assert oc.choose(mute) == 1  # a tie: the threshold nearest one half
    # The worse trade-off comes first: answering every interruption by talking into every
    # pause (sum 0.8) loses to a point that gives up less on either side (sum 0.6).
    both = lambda t, tt, pause, cut, bc: {  # noqa: E731
        "onset_threshold": t, "smooth_turn_taking": {"tor": tt, "latency_s": 0.3},
        "pause_handling": {"tor": pause}, "user_interruption": {"tor": cut},
        "backchannel": {"tor": bc}, "spoke": 1.0}
    assert oc.choose([both(0.05, 1.0, 1.0, 0.9, 0.1), both(0.5, 0.6, 0.2, 0.4, 0.2)]) == 1
    table = oc.format_curve(points, 1)
    assert "* 0        0.3" in table and len(table.splitlines()) == 4


def test_the_curve_is_drawn(tmp_path):
    points = [{"onset_threshold": t, "pause_handling": {"tor": t}, "backchannel": {"tor": t / 2},
               "smooth_turn_taking": {"tor": min(1, 2 * t)},
               "user_interruption": {"tor": min(1, 3 * t)}} for t in (0.1, 0.3, 0.5)]
    path = str(tmp_path / "curve.png")
    oc.plot_curves(points, 1, points[2], path, "test")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 10_000
