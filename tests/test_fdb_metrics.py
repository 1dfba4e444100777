"""Full-Duplex-Bench v1 metrics against hand-worked answers (definitions: fdb_metrics.py)."""

import math

import numpy as np
import pytest

from omniflatten_jax.evaluation.fdb_metrics import (
    BackchannelScore,
    Word,
    backchannel_histogram,
    backchannel_jsd,
    backchannel_score,
    jensen_shannon_distance,
    mean_tor_and_latency,
    takes_turn,
    turn_score,
    words_after,
)


def words(*spans):
    return [Word(f"w{i}", s, e) for i, (s, e) in enumerate(spans)]


def test_the_takes_the_turn_rule():
    assert takes_turn([]) == 0
    assert takes_turn(words((2.0, 2.3))) == 0  # one short word: a backchannel
    assert takes_turn(words((2.0, 2.2), (2.3, 2.5), (2.6, 2.9))) == 0  # 3 words, D = 0.9 s
    assert takes_turn(words((2.0, 2.2), (2.3, 2.5), (2.6, 3.0))) == 1  # D = 1.0 s: not < 1
    assert takes_turn(words(*[(2.0 + 0.1 * i, 2.05 + 0.1 * i) for i in range(4)])) == 1  # 4 words
    # No end on the last word: its start stands in (D = 0.95 s with 3 words -> 0).
    assert takes_turn([Word("a", 1.0, 1.2), Word("b", 1.5, 1.7), Word("c", 1.95, None)]) == 0
    assert takes_turn([Word("a", 1.0, 1.2), Word("b", 1.5, 1.7), Word("c", 2.0, None)]) == 1


def test_latency_is_clipped_and_averaged_over_turns_taken():
    early = turn_score(words((4.5, 5.0), (5.1, 6.0)), reference_s=5.0)  # starts 0.5 s early
    late = turn_score(words((5.4, 6.0), (6.1, 7.0)), reference_s=5.0)
    silent = turn_score([], reference_s=5.0)
    assert early.latency_s == 0.0 and late.latency_s == pytest.approx(0.4)
    assert silent.tor == 0 and silent.latency_s is None
    summary = mean_tor_and_latency([early, late, silent])
    assert summary["tor"] == pytest.approx(2 / 3)
    assert summary["latency_s"] == pytest.approx(0.2)  # (0 + 0.4) / 2: the silent one is out
    nothing = mean_tor_and_latency([silent])
    assert nothing["tor"] == 0 and math.isnan(nothing["latency_s"])


def test_interruption_scores_the_output_after_the_interruption():
    out = words((1.0, 1.5), (1.6, 2.0), (6.3, 6.8), (6.9, 7.5))
    after = words_after(out, 6.0)
    assert [w.start for w in after] == [6.3, 6.9]
    score = turn_score(after, reference_s=6.0)
    assert score.tor == 1 and score.latency_s == pytest.approx(0.3)


def test_backchannel_segments():
    short = (1.0, 1.5)
    out = [Word("mm", 1.1, 1.3)]
    s = backchannel_score([short], out, duration_s=10.0)
    assert s.tor == 0 and s.backchannels == (short,)
    assert s.frequency == pytest.approx(0.1)
    # A segment over 3 s is a turn and ends the visit; earlier backchannels stay listed.
    s = backchannel_score([short, (2.0, 5.5), (6.0, 6.5)], out, 10.0)
    assert s.tor == 1 and s.backchannels == (short,)
    # More than 3 words in a segment: a turn, and the TOR is the last segment's.
    many = [Word(w, 2.0 + 0.2 * i, 2.1 + 0.2 * i)
            for i, w in enumerate("one two three four".split())]
    s = backchannel_score([(2.0, 3.5)], many, 10.0)
    assert s.tor == 1 and s.backchannels == ()
    s = backchannel_score([(2.0, 3.5), (6.0, 6.4)], many, 10.0)
    assert s.tor == 0 and s.backchannels == ((6.0, 6.4),)
    # Short but wordy (3 words in 0.9 s): TOR 1, yet listed as a short segment.
    three = [Word(w, 8.0 + 0.3 * i, 8.2 + 0.3 * i) for i, w in enumerate("a b c".split())]
    s = backchannel_score([(8.0, 8.9)], three, 10.0)
    assert s.tor == 1 and s.backchannels == ((8.0, 8.9),)
    assert backchannel_score([], [], 10.0) == BackchannelScore(0, (), 10.0)


def test_backchannel_jsd_bins_and_empty_output():
    hist = backchannel_histogram([(0.0, 0.1), (0.39, 0.41)], duration_s=1.0)
    np.testing.assert_array_equal(hist, [1, 1, 1, 0, 0])  # 0.39 -> bin 1, 0.41 -> bin 2
    assert backchannel_jsd([], 1.0, np.ones(5)) == 1.0
    # Where listeners would backchannel, exactly: distance ~0.
    assert backchannel_jsd([(0.0, 0.1)], 1.0, np.array([1, 0, 0, 0, 0.0])) < 1e-4
    # Disjoint: the largest distance, sqrt(ln 2).
    far = backchannel_jsd([(0.0, 0.1)], 1.0, np.array([0, 0, 0, 0, 1.0]))
    assert far == pytest.approx(math.sqrt(math.log(2)), abs=1e-4)
    # The reference is resampled onto the output's bins (10 bins of ground truth -> 5).
    resampled = backchannel_jsd([(0.8, 0.9)], 1.0, np.linspace(0, 1, 10))
    assert 0 < resampled < far
    assert jensen_shannon_distance(np.array([1.0, 1]), np.array([1.0, 1])) == 0.0
