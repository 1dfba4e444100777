"""Scoring FDB v1 sample folders laid out as FDB's release is: per task, from output.wav and
word times (here an output.json, as an external recogniser writes it)."""

import json

import numpy as np
import pytest
import soundfile

from data_pipelines.synth.espeak import Synthesizer, Voice
from omniflatten_jax.evaluation.fdb_folders import task_of
from omniflatten_jax.evaluation.fdb_score import not_scored, score_task, table_row
from omniflatten_jax.speech.audio import resample


def sample(folder, n, annotation_name, annotation, chunks, seconds=6.0, wave=None):
    d = folder / str(n)
    d.mkdir(parents=True)
    silence = np.zeros(int(16_000 * seconds), np.float32)
    soundfile.write(d / "input.wav", silence, 16_000)
    soundfile.write(d / "output.wav", silence if wave is None else wave, 16_000)
    if annotation_name:
        (d / annotation_name).write_text(json.dumps(annotation))
    (d / "output.json").write_text(json.dumps({"text": "", "chunks": [
        {"text": w, "timestamp": [s, e]} for w, s, e in chunks]}))


TURN = [("sure", 2.3, 2.6), ("i", 2.7, 2.8), ("can", 2.8, 3.0), ("help", 3.0, 3.5)]


def test_turn_tasks_from_their_annotations(tmp_path):
    pause = tmp_path / "synthetic_pause_handling"
    sample(pause, 1, "pause.json", [{"text": "[PAUSE]", "timestamp": [1.0, 2.0]}], TURN)
    sample(pause, 2, "pause.json", [{"text": "[PAUSE]", "timestamp": [1.0, 2.0]}],
           [("mm", 1.2, 1.4)])  # a backchannel is not taking the turn
    assert task_of(str(pause)) == "pause_handling"
    assert score_task(str(pause), words="output.json")["tor"] == 0.5

    turn = tmp_path / "candor_turn_taking"
    sample(turn, 1, "turn_taking.json", [{"text": "[TURN-TAKING]", "timestamp": [2.0, 6.0]}],
           TURN)
    sample(turn, 2, "turn_taking.json", [{"text": "[TURN-TAKING]", "timestamp": [2.5, 6.0]}],
           TURN)  # answers 0.2 s before the turn ends: latency clipped to 0
    sample(turn, 3, "turn_taking.json", [{"text": "[TURN-TAKING]", "timestamp": [2.0, 6.0]}],
           [])
    r = score_task(str(turn), words="output.json")
    assert r["task"] == "smooth_turn_taking" and r["tor"] == pytest.approx(2 / 3)
    assert r["latency_s"] == pytest.approx(0.15)  # (0.3 + 0) / 2

    cut = tmp_path / "synthetic_user_interruption"
    note = [{"context": "tell me a story", "interrupt": "wait stop", "timestamp": [1.5, 2.0]}]
    sample(cut, 1, "interrupt.json", note, [("once", 0.5, 0.8), ("upon", 0.8, 1.0)] + TURN)
    sample(cut, 2, "interrupt.json", note, [("once", 0.5, 0.8), ("upon", 0.8, 1.0),
                                            ("a", 1.0, 1.1), ("time", 1.1, 1.6)])
    r = score_task(str(cut), words="output.json")
    # Only the words after the interruption count: sample 2 said nothing after it.
    assert r["tor"] == 0.5 and r["latency_s"] == pytest.approx(0.3)


def test_backchannel_task_with_vad_segments_and_ground_truth(tmp_path):
    Synthesizer.start_afresh()
    synth = Synthesizer()
    mm = synth.speak("mm-hm", Voice("en-us"))
    mm = resample(mm.audio, mm.sample_rate, 16_000)
    wave = np.zeros(16_000 * 6, np.float32)
    for at in (1.0, 4.0):
        wave[int(at * 16_000):int(at * 16_000) + len(mm)] = mm
    task = tmp_path / "icc_backchannel"
    sample(task, 1, None, None, [("mm", 1.05, 1.3), ("mm", 4.05, 4.3)], wave=wave)
    r = score_task(str(task), words="output.json")
    assert r["task"] == "backchannel" and r["tor"] == 0
    assert r["frequency"] == pytest.approx(2 / 6)
    assert r["jsd"] is None  # no ground truth beside the samples: the table says why
    assert "icc_gt_distribution.json" in not_scored({"icc_backchannel": r})[0]
    near, far = np.zeros(30), np.zeros(30)
    near[5:8] = near[20:23] = 1.0  # listeners backchannel where the model did
    far[12:15] = far[26:29] = 1.0  # ... or elsewhere
    jsd = {}
    for name, truth in (("near", near), ("far", far)):
        (task / "icc_gt_distribution.json").write_text(json.dumps({"1": truth.tolist()}))
        jsd[name] = score_task(str(task), words="output.json")["jsd"]
    assert jsd["near"] < 0.5 < 0.8 < jsd["far"]
    # A ground truth keyed otherwise scores nothing, and says so; an empty one is an error.
    (task / "icc_gt_distribution.json").write_text(json.dumps({"7": near.tolist()}))
    r = score_task(str(task), words="output.json")
    assert r["jsd"] is None and "holds none of" in not_scored({"icc_backchannel": r})[0]
    (task / "icc_gt_distribution.json").write_text(json.dumps({"1": []}))
    with pytest.raises(ValueError, match="sample 1's ground truth must be a non-empty list"):
        score_task(str(task), words="output.json")


def test_interruption_output_is_recognised_from_the_interruption_end(tmp_path):
    """PocketSphinx hears the output cropped at the interrupting speech's end, and its word
    times come back in the output's own time (as FDB's recogniser's do)."""
    Synthesizer.start_afresh()
    synth = Synthesizer()
    before, after = (synth.speak(text, Voice("en-us")) for text in
                     ("once upon a time there was", "sorry what did you want to ask"))
    before, after = (resample(u.audio, u.sample_rate, 16_000) for u in (before, after))
    wave = np.zeros(16_000 * 7, np.float32)
    wave[8_000:8_000 + len(before)] = before  # talking over the user from 0.5 s ...
    wave[48_000:48_000 + len(after)] = after  # ... and answering from 3.0 s
    # Recognised whole and filtered, the words would be the same; a latency clipped to 0
    # would show times left in the crop's own clock.
    cut = tmp_path / "synthetic_user_interruption"
    sample(cut, 1, "interrupt.json", [{"context": "", "interrupt": "wait",
                                       "timestamp": [0.5, 2.5]}], [], seconds=7, wave=wave)
    r = score_task(str(cut))  # PocketSphinx
    assert r["tor"] == 1.0 and r["latency_s"] == pytest.approx(0.5, abs=0.15)


def test_table_row_puts_each_task_folder_in_its_published_column():
    pause = lambda tor: {"task": "pause_handling", "tor": tor}  # noqa: E731
    results = {"synthetic_pause_handling": pause(0.1), "candor_pause_handling": pause(0.2),
               "icc_backchannel": {"task": "backchannel", "tor": 0.3, "frequency": 0.4,
                                   "jsd": 0.5},
               "candor_turn_taking": {"task": "smooth_turn_taking", "tor": 0.6,
                                      "latency_s": 0.7},
               "synthetic_user_interruption": {"task": "user_interruption", "tor": 0.8,
                                               "latency_s": 0.9}}
    assert table_row(results) == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    # Ours are synthesised: the synthetic column; the Candor one stays empty.
    assert table_row({"pause_handling": pause(0.1)}) == (0.1,) + (None,) * 8
    with pytest.raises(ValueError, match="pause_handling and synthetic_pause_handling"):
        table_row({"pause_handling": pause(0.1), "synthetic_pause_handling": pause(0.2)})
