"""The diagnosis's reductions (`evaluation.speak_probability`): hand-worked answers."""

import numpy as np
import pytest

from omniflatten_jax.evaluation import speak_probability as sp


def test_onset_frames_stop_at_the_reply_and_cover_pauses():
    user = np.zeros(40, bool)
    user[0:10] = True  # the user speaks, stops at 10 (turn end), speaks again at 30
    user[30:40] = True
    assistant = np.zeros(40, bool)
    assistant[14:20] = True  # the recorded reply starts at frame 14
    events = [("assistant", 10), ("pause", 22, 26)]
    found = sp.onset_frames(user, assistant, events, max_frames=15)
    # Frames 10..14: the onset frame itself is predicted before it is seen, so it counts.
    assert found["reply"] == [(10, 0), (11, 1), (12, 2), (13, 3), (14, 4)]
    assert found["pause"] == [(22, 0), (23, 1), (24, 2), (25, 3)]


def test_aucs_count_pairs_and_ties_by_half():
    assert sp.event_auc({"reply": [0.9, 0.5], "pause": [0.5, 0.1]}) == pytest.approx(
        (2 + 1.5) / 4)
    assert sp.event_auc({"reply": [0.3], "pause": []}) is None
    # Per-silence: pairs compared only within a bin of elapsed silence (25 Hz: 5 frames each).
    samples = {"reply": [(0.8, 0), (0.2, 6)], "pause": [(0.1, 1), (0.9, 30)]}
    assert sp.onset_auc(samples, 25.0) == 1.0  # 0.8 vs 0.1 in bin 0; nothing else pairs
    curves = sp.onset_curves(samples, 25.0)
    assert curves["reply"][:2] == [0.8, 0.2] and curves["pause_frames"][0] == 1


def test_traces_align_on_the_anchor_and_pad_with_nan():
    p = np.arange(100, dtype=float)
    t = sp.traces(p, [10], frame_rate=25.0)  # 1 s before (25 frames), 2 s after (50)
    assert t.shape == (1, 75)
    assert np.isnan(t[0, :15]).all() and t[0, 25] == 10.0 and t[0, -1] == 59.0
