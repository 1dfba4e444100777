"""The offline word-time and speech-segment sources of the FDB harness, on real audio."""

import json

import numpy as np

from data_pipelines.synth.espeak import Synthesizer, Voice
from omniflatten_jax.evaluation.fdb_asr import (
    output_json_words,
    pocketsphinx_words,
    speech_segments,
)
from omniflatten_jax.speech.audio import resample


def test_words_and_segments_of_a_spoken_turn_and_a_backchannel():
    synth = Synthesizer()
    Synthesizer.start_afresh()
    turn = synth.speak("hello there how are you doing today", Voice("en-us"))
    mm = synth.speak("mm-hm", Voice("en-us"))
    gap = lambda s: np.zeros(int(16_000 * s), np.float32)  # noqa: E731
    wave = np.concatenate([gap(1.0), resample(turn.audio, turn.sample_rate, 16_000), gap(0.8),
                           resample(mm.audio, mm.sample_rate, 16_000), gap(1.0)])
    segments = speech_segments(wave)
    assert len(segments) == 2
    (s0, e0), (s1, e1) = segments
    assert abs(s0 - 1.0) < 0.15 and e1 - s1 < 1.0 < e0 - s0
    words = pocketsphinx_words(wave)
    assert len(words) >= 3  # it hears words, if not always the right ones
    assert all(w.end > w.start for w in words)
    assert abs(words[0].start - 1.0) < 0.3
    assert pocketsphinx_words(gap(2.0)) == []
    # Segments whose padding overlaps are heard once: the same words, in time order, as
    # from one segment over both.
    split = (s0 + e0) / 2
    both = pocketsphinx_words(wave, [(s0, split), (split + 0.05, e0)])
    assert both == pocketsphinx_words(wave, [(s0, e0)])
    assert all(a.end <= b.start + 1e-9 for a, b in zip(both, both[1:]))


def test_output_json_is_read_as_is(tmp_path):
    path = tmp_path / "output.json"
    path.write_text(json.dumps({"text": "hi there", "chunks": [
        {"text": "hi", "timestamp": [0.5, 0.7]}, {"text": "there", "timestamp": [0.8, None]}]}))
    words = output_json_words(str(path))
    assert [(w.text, w.start, w.end) for w in words] == [("hi", 0.5, 0.7), ("there", 0.8, None)]
