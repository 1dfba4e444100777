"""Turn-taking metrics on hand-made token sequences with known answers."""

import numpy as np
import pytest

from omniflatten_jax.evaluation.turn_taking import (
    events,
    format_table,
    span_events,
    turn_taking_metrics,
)

S = 0  # <silent_speech>
A = 7  # any speech code


def speech(*runs):
    return np.concatenate([np.full(n, token) for token, n in runs])


def test_events_from_turns_and_patterns():
    roles = ["user", "assistant", "user", "assistant", "user"]
    starts, ends = [0, 12, 20, 40, 60], [10, 25, 30, 50, 70]
    found = events(roles, starts, ends, ["reply", "interrupt", "reply", "wait"])
    assert found == [("assistant", 10), ("interruption", 20), ("assistant", 30)]


def test_assistant_turn_taking_known_answers():
    # Event at frame 10. Dialogue 1 speaks at once (d=0), 2 after 3 frames, 3 after 12,
    # 4 after 40 frames = 1.6 s (a failure), 5 never speaks (a failure).
    dialogues = [(speech((S, 10), (A, 5)), [("assistant", 10)]),
                 (speech((S, 13), (A, 5)), [("assistant", 10)]),
                 (speech((S, 22), (A, 5)), [("assistant", 10)]),
                 (speech((S, 50), (A, 5)), [("assistant", 10)]),
                 (speech((S, 60)), [("assistant", 10)])]
    r = turn_taking_metrics(dialogues, silent_id=S, frame_rate=25,
                            backchannel_grace_s=0.5)["assistant"]
    assert r["events"] == 5
    assert r["acc@1"] == pytest.approx(1 / 5)
    assert r["acc@5"] == pytest.approx(2 / 5)
    assert r["acc@10"] == pytest.approx(2 / 5)
    assert r["acc@25"] == pytest.approx(3 / 5)
    assert r["failure_rate"] == pytest.approx(2 / 5)
    assert r["avg_response_ms"] == pytest.approx((0 + 3 + 12) / 3 * 40)
    assert r["already"] == 0  # nobody spoke over the user's last frame (frame 9)


def test_interruption_known_answers_and_timeout_edge():
    # The user cuts in at frame 20: the model falls silent after 2 frames; in the second
    # dialogue it talks on for exactly 1.5 s (37.5 frames -> 38 frames is a failure).
    dialogues = [(speech((A, 22), (S, 10)), [("interruption", 20)]),
                 (speech((A, 58), (S, 10)), [("interruption", 20)]),
                 (speech((A, 57), (S, 10)), [("interruption", 20)])]
    r = turn_taking_metrics(dialogues, silent_id=S, frame_rate=25, backchannel_grace_s=0.5)
    assert r["frame_ms"] == 40 and r["timeout_ms"] == 1500
    i = r["interruption"]
    assert i["acc@5"] == pytest.approx(1 / 3) and i["acc@25"] == pytest.approx(1 / 3)
    assert i["failure_rate"] == pytest.approx(1 / 3)  # d=38 fails, d=37 (1480 ms) succeeds
    assert i["avg_response_ms"] == pytest.approx((2 + 37) / 2 * 40)
    assert r["assistant"]["events"] == 0 and r["assistant"]["acc@1"] is None
    assert "interruption" in format_table(r) and "paper" in format_table(r)


def test_already_counts_models_in_the_target_state_before_the_event():
    # Assistant event at 10: the first model talks over the user from frame 8 (d=0, already);
    # interruption at 20: the second model had stopped at frame 15 (d=0, already).
    r = turn_taking_metrics([(speech((S, 8), (A, 10)), [("assistant", 10)]),
                             (speech((A, 15), (S, 10)), [("interruption", 20)]),
                             (speech((A, 20), (S, 10)), [("interruption", 20)])],
                            silent_id=S, frame_rate=25, backchannel_grace_s=0.5)
    assert r["assistant"]["acc@1"] == 1 and r["assistant"]["already"] == 1
    assert r["interruption"]["acc@1"] == 1 and r["interruption"]["already"] == pytest.approx(1 / 2)
    # Scored over the interruptions where the model was speaking, the one already silent
    # drops out: the other stopped at once (d=0 at frame 20).
    speaking = r["interruption_speaking"]
    assert speaking["events"] == 1 and speaking["acc@1"] == 1 and speaking["already"] == 0
    mute = turn_taking_metrics([(speech((S, 30)), [("interruption", 20)])], silent_id=S,
                               frame_rate=25, backchannel_grace_s=0.5)
    assert mute["interruption"]["acc@25"] == 1  # silent already: a pass, as the paper reads
    assert mute["interruption_speaking"]["events"] == 0  # ... but nothing to stop
    assert mute["interruption_speaking"]["acc@25"] is None
    assert "speaking" in format_table(r)


def test_pauses_and_backchannels_are_sat_through_or_not():
    S, T = 0, 7  # <silent_speech>, any speech token; 25 Hz: the grace is 13 frames
    spans = span_events(["pause", "user_backchannel", "assistant_backchannel"],
                        [10, 40, 70], [20, 45, 75])
    assert spans == [("pause", 10, 20), ("user_backchannel", 40, 45)]
    quiet_then_talking = np.array([S] * 30 + [T] * 70)  # silent through the pause, talking on
    breaks_in = np.array([S] * 15 + [T] * 85)  # speaks inside the pause
    stops = np.array([S] * 20 + [T] * 30 + [S] * 50)  # stops 5 frames after the backchannel
    r = turn_taking_metrics([(quiet_then_talking, spans), (breaks_in, spans), (stops, spans)],
                            S, 25.0, backchannel_grace_s=0.5)
    assert r["pause"] == {"events": 3, "held": pytest.approx(2 / 3), "already": 0.0}
    # The backchannel: kept talking through it and 0.5 s after (only the first two).
    assert r["user_backchannel"]["held"] == pytest.approx(2 / 3)
    assert r["user_backchannel"]["already"] == 0.0
    assert r["assistant"]["events"] == 0  # spans are not turn changes
    assert "pause" in format_table(r)


def test_the_backchannel_grace_is_the_runs_simulation_margin():
    """The simulator leaves the assistant `backchannel_margin_s` to go on after a user
    backchannel; the score must use the same setting, not the class default: a model that
    stops 0.4 s after "mm-hm" holds under a 0.2 s margin and fails under the default 0.5 s."""
    from omniflatten_jax.config import SimulationConfig

    S, T = 0, 7
    spans = [("user_backchannel", 40, 45)]
    stops = [(np.array([T] * 55 + [S] * 45), spans)]  # 10 frames (0.4 s) after its end
    default = SimulationConfig().backchannel_margin_s
    assert default == 0.5
    short = turn_taking_metrics(stops, S, 25.0, backchannel_grace_s=0.2)["user_backchannel"]
    long = turn_taking_metrics(stops, S, 25.0, backchannel_grace_s=default)["user_backchannel"]
    assert (short["held"], long["held"]) == (1.0, 0.0)
