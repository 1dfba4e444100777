"""The FDB harness end to end: two tiny synthesised samples per task, streamed through a
duplex checkpoint by the command, output.wav beside each input.wav, fdb.json and the table."""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
import soundfile

from omniflatten_jax import checkpoint
from omniflatten_jax.config import FlattenConfig, MelConfig
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.model import transformer
from omniflatten_jax.speech.audio import resample
from omniflatten_jax.speech.kmeans import KMeansMelTokenizer
from tests.helpers import SMALL_MODEL, run_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUT = TokenLayout("bytes", 256, 32)


def speech(text):
    from data_pipelines.synth.espeak import Synthesizer, Voice

    Synthesizer.start_afresh()
    utt = Synthesizer().speak(text, Voice("en-us"))
    return resample(utt.audio, utt.sample_rate, 16_000)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("duplex_3")
    tokenizer = KMeansMelTokenizer.fit([speech("good morning"), speech("see you tomorrow")],
                                       MelConfig(), LAYOUT.num_speech_codes, seed=0)
    tokenizer.save(str(root / "tokenizer.npz"))
    data = (root / "tokenizer.npz").read_bytes()
    meta = checkpoint.CheckpointMeta(SMALL_MODEL, LAYOUT, stage="duplex_3",
                                     flatten=FlattenConfig(text_chunk=8), context_chunks=4,
                                     speech_tokenizer_sha256=checkpoint.sha256(data))
    model = transformer(SMALL_MODEL, LAYOUT.vocab_size)
    checkpoint.save_params(root / "checkpoints", 1, model.init(jax.random.key(0)), meta, data)
    return root / "checkpoints"


def write_sample(folder, wave, annotation_name=None, annotation=None):
    folder.mkdir(parents=True)
    soundfile.write(folder / "input.wav", wave, 16_000)
    if annotation_name:
        (folder / annotation_name).write_text(json.dumps(annotation))


def test_the_harness_streams_and_scores_every_task(checkpoint_dir, tmp_path):
    turn = speech("could you tell me the time please")
    gap = lambda s: np.zeros(int(16_000 * s), np.float32)  # noqa: E731
    root = tmp_path / "fdb"
    for n in (1, 2):  # FDB v1's folder names
        for pauses in ("synthetic_pause_handling", "candor_pause_handling"):
            write_sample(root / pauses / str(n),
                         np.concatenate([gap(0.3), turn[:16_000], gap(1.2), turn[16_000:]]),
                         "pause.json", [{"text": "[PAUSE]", "timestamp": [1.3, 2.5]}])
        clip = np.concatenate([gap(0.3), turn, gap(3.0)])
        end = 0.3 + len(turn) / 16_000
        write_sample(root / "candor_turn_taking" / str(n), clip, "turn_taking.json",
                     [{"text": "[TURN-TAKING]", "timestamp": [end, len(clip) / 16_000]}])
        write_sample(root / "synthetic_user_interruption" / str(n), clip, "interrupt.json",
                     [{"context": "", "interrupt": "x", "timestamp": [0.3, end]}])
        write_sample(root / "icc_backchannel" / str(n), clip)
    run = run_command("fdb", "--checkpoint", checkpoint_dir, "--root", root, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "candor_turn_taking: streamed 2/2 samples" in run.stderr  # progress
    for folder in root.glob("*/*"):
        inp, out = (soundfile.info(str(folder / f)) for f in ("input.wav", "output.wav"))
        assert abs(inp.duration - out.duration) < 1e-3  # FDB's contract: same duration
    result = json.loads((root / "fdb.json").read_text())
    assert {n: s["task"] for n, s in result["model"].items()} == {
        "synthetic_pause_handling": "pause_handling", "candor_pause_handling": "pause_handling",
        "candor_turn_taking": "smooth_turn_taking",
        "synthetic_user_interruption": "user_interruption", "icc_backchannel": "backchannel"}
    for scores in result["model"].values():
        assert scores["samples"] == 2
    assert result["data"] == {}  # FDB's samples keep no recorded assistant channel
    ours = next(line for line in run.stdout.splitlines() if line.startswith("ours")).split()
    # Every column scored but the JSD (no icc_gt_distribution.json here: the output says so)
    # and a latency where no sample took the turn.
    pause_syn, pause_candor, bc_tor, bc_freq, jsd, tt_tor, tt_lat, int_tor, int_lat = ours[1:]
    assert "-" not in (pause_syn, pause_candor, bc_tor, bc_freq, tt_tor, int_tor)
    assert jsd == "-" and (tt_lat == "-") == (tt_tor == "0.000")
    assert (int_lat == "-") == (int_tor == "0.000")
    assert "Moshi" in run.stdout and "not scored" in run.stdout
    assert "no " + str(root / "icc_backchannel" / "icc_gt_distribution.json") in run.stdout
    # A rerun resumes: only the sample without output.wav is streamed, in a new process, and
    # it is the same output.wav (the same checkpoint and input).
    first = {p: p.read_bytes() for p in root.glob("candor_turn_taking/*/output.wav")}
    (root / "candor_turn_taking" / "1" / "output.wav").unlink()
    again = run_command("fdb", "--checkpoint", checkpoint_dir, "--root", root, "--task",
                        "smooth_turn_taking", timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "candor_turn_taking: 1 of 2 samples already streamed" in again.stderr
    assert "candor_turn_taking: streamed 1/1 samples" in again.stderr
    assert first == {p: p.read_bytes() for p in root.glob("candor_turn_taking/*/output.wav")}
    # Another checkpoint's outputs are not this one's: every sample is streamed again.
    other = tmp_path / "other"
    shutil.copytree(checkpoint_dir, other)
    run = run_command("fdb", "--checkpoint", other, "--root", root, "--task",
                      "smooth_turn_taking", timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "candor_turn_taking: streamed 2/2 samples" in run.stderr
    assert json.loads((root / "candor_turn_taking" / "1" / "output_source.json").read_text())[
        "checkpoint"].startswith(str(other))


def test_a_run_stopped_half_way_resumes_with_its_own_outputs_only(tmp_path):
    from omniflatten_jax.evaluation.fdb import stream_samples

    task = tmp_path / "smooth_turn_taking"
    for n in (1, 2, 3):
        write_sample(task / str(n), np.zeros(1_600, np.float32))

    def model_of(name, stop_after=None):
        def model(input_path, out_dir):
            if stop_after is not None and len(streamed) == stop_after:
                raise KeyboardInterrupt
            streamed.append(input_path)
            (task.parent / out_dir / "output.wav").write_text(name)
        streamed = []
        return model

    def outputs():
        return [(task / str(n) / "output.wav").read_text()
                if (task / str(n) / "output.wav").exists() else None for n in (1, 2, 3)]

    assert stream_samples(model_of("A"), str(task), {"checkpoint": "A"}) == 3
    with pytest.raises(KeyboardInterrupt):
        stream_samples(model_of("B", stop_after=1), str(task), {"checkpoint": "B"})
    assert outputs() == ["B", None, None]  # A's are gone: never scored beside B's
    assert stream_samples(model_of("B"), str(task), {"checkpoint": "B"}) == 2
    assert outputs() == ["B", "B", "B"]
    assert stream_samples(model_of("B"), str(task), {"checkpoint": "B"}) == 0


def test_fdb_on_a_malformed_annotation_names_it_before_streaming(checkpoint_dir, tmp_path):
    root = tmp_path / "fdb"
    clip = np.zeros(16_000, np.float32)
    write_sample(root / "icc_backchannel" / "1", clip)
    write_sample(root / "candor_turn_taking" / "1", clip, "turn_taking.json",
                 [{"text": "[TURN-TAKING]", "timestamp": [0.5, 1.0]}])
    write_sample(root / "candor_turn_taking" / "2", clip)
    (root / "candor_turn_taking" / "2" / "turn_taking.json").write_text("")  # a torn write
    run = run_command("fdb", "--checkpoint", checkpoint_dir, "--root", root, timeout=300)
    assert run.returncode == 1
    bad = root / "candor_turn_taking" / "2" / "turn_taking.json"
    assert f"error: {bad} is not valid JSON" in run.stderr
    assert "Traceback" not in run.stderr and "decoding" not in run.stderr  # no model loaded
    assert not list(root.glob("*/*/output.wav"))  # nothing streamed


@pytest.mark.parametrize("case, message", [
    ("unknown annotation", "overlap.json is not an annotation this harness knows"),
    ("no input", "2/input.wav is missing"),
    ("mixed tasks", "2 is a backchannel sample in a folder of smooth_turn_taking samples"),
    ("no timestamp", "interrupt.json holds the entry"),
    ("past the input", "timestamp [1.5, 3.0] does not start inside input.wav (0 to 1.00 s)"),
    ("interruption past the input", "interruption's end, 2.0 s, is past input.wav's"),
    ("two backchannel folders", "would fill one column"),
    ("damaged input", "2/input.wav is not a readable WAV file"),
])
def test_fdb_on_bad_sample_folders_names_the_file_and_the_fix(tmp_path, case, message):
    from omniflatten_jax.evaluation.fdb import check_root

    clip = np.zeros(16_000, np.float32)
    turn = ("turn_taking.json", [{"text": "[TURN-TAKING]", "timestamp": [0.5, 1.0]}])
    write_sample(tmp_path / "icc_backchannel" / "1", clip)
    write_sample(tmp_path / "turns" / "1", clip, *turn)
    (tmp_path / "notes").mkdir()  # not a task folder: ignored
    second = tmp_path / "turns" / "2"
    if case == "unknown annotation":  # FDB v1.5's, say: was scored as backchannel
        write_sample(tmp_path / "overlaps" / "1", clip, "overlap.json", [{"timestamp": [0, 1]}])
    elif case == "no input":
        second.mkdir()
    elif case == "mixed tasks":
        write_sample(second, clip)
    elif case == "no timestamp":
        write_sample(tmp_path / "interruptions" / "1", clip, "interrupt.json",
                     [{"context": "", "interrupt": "x"}])
    elif case == "past the input":
        write_sample(second, clip, turn[0], [{"timestamp": [1.5, 3.0]}])
    elif case == "interruption past the input":  # the harness crops the output there
        write_sample(tmp_path / "interruptions" / "1", clip, "interrupt.json",
                     [{"context": "", "interrupt": "x", "timestamp": [0.5, 2.0]}])
    elif case == "two backchannel folders":
        write_sample(tmp_path / "more_backchannel" / "1", clip)
    elif case == "damaged input":
        write_sample(second, clip, *turn)
        (second / "input.wav").write_bytes(b"RIFF\0\0")
    with pytest.raises((ValueError, OSError), match=re.escape(message)):
        check_root(str(tmp_path))


def test_fdb_scores_only_the_tasks_asked_for_and_ignores_other_folders(tmp_path):
    from omniflatten_jax.evaluation.fdb import check_root

    write_sample(tmp_path / "icc_backchannel" / "1", np.zeros(16_000, np.float32))
    write_sample(tmp_path / "turns" / "1", np.zeros(16_000, np.float32), "turn_taking.json",
                 [{"text": "[TURN-TAKING]", "timestamp": [0.5, 1.0]}])
    (tmp_path / "notes").mkdir()
    assert check_root(str(tmp_path), ("backchannel",)) == [
        (str(tmp_path / "icc_backchannel"), "backchannel")]
    assert [task for _, task in check_root(str(tmp_path))] == ["backchannel",
                                                               "smooth_turn_taking"]
