"""Word timestamps and speech segments of an ``output.wav``, offline, for the FDB metrics.

* Words: `pocketsphinx_words` runs PocketSphinx's English model, which ships in its wheel (no
  download): word start and end times at its 10 ms frames. It is weak on synthetic voices;
  the metrics use it for timing (how many words, when), not for content. It is run on the
  speech segments only (padded by `SEGMENT_PAD_S`): on digital silence it hears words.
  `output_json_words` reads an ``output.json`` written by any external recogniser (FDB's
  parakeet transcripts:
  ``{"text": ..., "chunks": [{"text": word, "timestamp": [start, end]}]}``) as is.
* Segments: `speech_segments` runs Silero VAD from the weights inside the `silero-vad` wheel
  (`load_silero_vad()` reads the packaged file; nothing is fetched from a hub), as FDB's
  backchannel scoring does.

Both take 16 kHz mono float audio.
"""

from __future__ import annotations

import functools
import json

import numpy as np

from omniflatten_jax.evaluation.fdb_metrics import Word

SAMPLE_RATE = 16_000
SPHINX_FRAME_S = 0.01
SEGMENT_PAD_S = 0.1
_NOT_WORDS = ("<s>", "</s>", "<sil>")


@functools.cache
def _sphinx():
    from pocketsphinx import Decoder

    return Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")


def pocketsphinx_words(wave: np.ndarray,
                       segments: list[tuple[float, float]] | None = None) -> list[Word]:
    """The recognised words of 16 kHz `wave` with their times in seconds, decoded within its
    speech segments (`speech_segments`, unless given), each padded by `SEGMENT_PAD_S`;
    padded segments that overlap are decoded as one, so no audio is heard twice."""
    windows: list[list[float]] = []
    for start, end in speech_segments(wave) if segments is None else segments:
        lo, hi = max(0.0, start - SEGMENT_PAD_S), end + SEGMENT_PAD_S
        if windows and lo <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], hi)
        else:
            windows.append([lo, hi])
    words = []
    for lo, hi in windows:
        part = wave[int(lo * SAMPLE_RATE):int(hi * SAMPLE_RATE)]
        words += [Word(w.text, w.start + lo, w.end + lo) for w in _decode(part)]
    return words


def _decode(wave: np.ndarray) -> list[Word]:
    pcm = (np.clip(wave, -1, 1) * 32767).astype(np.int16).tobytes()
    decoder = _sphinx()
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    words = []
    for seg in decoder.seg():
        text = seg.word.split("(")[0]  # alternate pronunciations: "the(2)"
        if text in _NOT_WORDS or text.startswith("[") or text.startswith("+"):
            continue
        words.append(Word(text, seg.start_frame * SPHINX_FRAME_S,
                          (seg.end_frame + 1) * SPHINX_FRAME_S))
    return words


def output_json_words(path: str) -> list[Word]:
    """Words from an FDB-style ``output.json`` (times in seconds; an end may be missing)."""
    with open(path) as f:
        chunks = json.load(f).get("chunks", [])
    words = []
    for chunk in chunks:
        start, end = (list(chunk["timestamp"]) + [None])[:2]
        if start is not None:
            words.append(Word(str(chunk["text"]), float(start),
                              None if end is None else float(end)))
    return words


@functools.cache
def _silero():
    from silero_vad import load_silero_vad

    return load_silero_vad()


def speech_segments(wave: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) seconds of the speech Silero VAD finds in 16 kHz `wave`."""
    import torch
    from silero_vad import get_speech_timestamps

    found = get_speech_timestamps(torch.from_numpy(np.asarray(wave, np.float32)), _silero(),
                                  sampling_rate=SAMPLE_RATE, return_seconds=True)
    return [(float(s["start"]), float(s["end"])) for s in found]
