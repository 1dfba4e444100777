"""The simulator's pauses and backchannels land where their settings say (conversation.py)."""

import dataclasses

import numpy as np

from data_pipelines.synth import voices
from data_pipelines.synth.conversation import simulate
from data_pipelines.synth.espeak import Synthesizer
from omniflatten_jax.config import SimulationConfig

TURNS = [("user", "hello there how are you doing on this fine morning"),
         ("assistant", "i am doing very well thank you for asking me about it today"),
         ("user", "what would you like to talk about with me right now then"),
         ("assistant", "we could talk about the weather or about music if you like")]
ALL_ON = SimulationConfig(pause_probability=1.0, user_backchannel_probability=1.0,
                          assistant_backchannel_probability=1.0, interrupt_probability=0.0)


def run(cfg, seed=0):
    Synthesizer.start_afresh()  # as the builder does per dialogue: comparable audio
    rng = np.random.default_rng(seed)
    return simulate(TURNS, voices.user_voice("en", rng), voices.assistant_voice("en"), cfg, rng,
                    16_000)


def test_events_respect_their_timing_ranges():
    assistant_backchannels = 0
    for seed in range(4):
        conv = run(ALL_ON, seed)
        kinds = [e.kind for e in conv.events]
        assert kinds.count("pause") == 2  # every user turn has at least 4 words
        assert "user_backchannel" in kinds
        assert [e.start_s for e in conv.events] == sorted(e.start_s for e in conv.events)
        for event in conv.events:
            inside = [t for t in conv.turns if t.start_s <= event.start_s and
                      event.end_s <= t.end_s]
            if event.kind == "pause":
                (turn,) = inside
                assert turn.role == "user"
                lo, hi = ALL_ON.pause_s
                assert lo - 1e-6 <= event.end_s - event.start_s <= hi + 1e-6
                # Between two words: no word starts inside the pause, one starts at its end.
                assert not np.any((turn.word_starts_s > event.start_s + 1e-6)
                                  & (turn.word_starts_s < event.end_s - 1e-6))
                assert np.any(np.isclose(turn.word_starts_s, event.end_s, atol=1e-3))
                # The user channel is silent there (noise aside: the SNR is at least 15 dB).
                sr = conv.sample_rate
                quiet = conv.user_audio[int(event.start_s * sr) + 400:int(event.end_s * sr) - 400]
                assert np.sqrt(np.mean(quiet ** 2)) < 0.05
            else:
                speaker = "assistant" if event.kind == "user_backchannel" else "user"
                (turn,) = [t for t in inside if t.role == speaker]
                lo, hi = (ALL_ON.user_backchannel_at if speaker == "assistant"
                          else ALL_ON.assistant_backchannel_at)
                where = (event.start_s - turn.start_s) / (turn.end_s - turn.start_s)
                assert lo - 1e-6 <= where <= hi + 1e-6
                # The speaker goes on for the margin after it (nobody else speaks first).
                assert event.end_s + ALL_ON.backchannel_margin_s <= turn.end_s + 1e-6
                assert event.text in ALL_ON.backchannels
                if speaker == "user":  # never inside the user's pause
                    assert not any(p.start_s < event.end_s and event.start_s < p.end_s
                                   for p in conv.events if p.kind == "pause")
                    assistant_backchannels += 1
    assert assistant_backchannels > 0


def test_a_pause_while_the_assistant_still_speaks_is_not_an_event():
    # Every assistant turn is interrupted, and the assistant takes long to stop: most pauses
    # early in the interrupting turn fall before it has stopped.
    cfg = dataclasses.replace(ALL_ON, interrupt_probability=1.0, reaction_s=(1.5, 1.5),
                              pause_at=(0.0, 0.0), user_backchannel_probability=0.0)
    dropped = 0
    for seed in range(3):
        conv = run(cfg, seed)
        assistant = [(t.start_s, t.end_s) for t in conv.turns if t.role == "assistant"]
        assistant += [(e.start_s, e.end_s) for e in conv.events
                      if e.kind == "assistant_backchannel"]
        pauses = [e for e in conv.events if e.kind == "pause"]
        for pause in pauses:
            assert not any(lo < pause.end_s and pause.start_s < hi for lo, hi in assistant)
        dropped += 2 - len(pauses)  # both user turns got a pause in their audio
    assert dropped > 0


def test_behaviours_switched_off_leave_the_conversation_as_it_was():
    off = dataclasses.replace(ALL_ON, pause_probability=0.0, user_backchannel_probability=0.0,
                              assistant_backchannel_probability=0.0)
    conv = run(off)
    assert conv.events == ()
    again = run(dataclasses.replace(off, backchannels=("hm",)))  # an unused setting
    np.testing.assert_array_equal(conv.user_audio, again.user_audio)
