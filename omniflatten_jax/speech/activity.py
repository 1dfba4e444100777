"""Is there speech in this audio? A content check for audio paired with a transcript.

Loading checks the container (readable, not empty, finite samples); this checks the content,
so that a recording of silence, a test tone or a square wave, or a float file in the wrong
scale, paired with a transcript, is found instead of trained on. Numpy only, under a
millisecond per second of audio.

Speech is loud and quiet by turns at the syllable rate (3 to 8 per second), and each moment of
it spreads its energy over many frequencies (harmonics shaped by formants, the noise of
consonants). A steady sound (a tone, a square wave, a hum, steady noise, DC) has one level
throughout; a pure tone, steady or switched on and off, puts its energy at one frequency;
digital silence has no energy at all. Over 25 ms frames every 10 ms, the check measures:

* the loudest frame's level (dBFS): below `SILENT_DBFS` there is nothing to hear;
* the spread of the frame levels (dB between the 10th and 90th percentile) over the frames
  within `ACTIVE_RANGE_DB` of the loudest one: speech spans 6 dB (one sustained vowel, "o")
  to 40; a tone, square wave or steady noise a fraction of a dB;
* the spectral bandwidth of those frames (the power-weighted standard deviation of frequency
  about the centroid, median over the frames): speech 250 Hz and more (eSpeak's narrowest,
  a male "Bonn"), a pure tone some 25 Hz (the analysis window's own width).

Both thresholds sit well inside these margins, measured on every recording of the embedded
corpus (10,828: each utterance with words, in its user voice and the assistant's): the check
must never reject real speech.

Separately, float samples beyond `MAX_ABS_SAMPLE` in absolute value are not audio scaled to
[-1, 1] (integer PCM written as float, or a corrupt float file): integer formats load within
[-1, 1], and a float recording of sensible gain may overshoot a little, never by a factor 4.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

MAX_ABS_SAMPLE = 4.0  # |sample| above this, after loading as float: not audio in [-1, 1]
SILENT_DBFS = -70.0  # the loudest 25 ms frame quieter than this: silence (16-bit LSB ~ -90)
ACTIVE_RANGE_DB = 40.0  # frames within this of the loudest are the ones measured
MIN_LEVEL_SPREAD_DB = 3.0  # speech: 6 dB and more; a tone, square wave or steady noise: < 1
MIN_BANDWIDTH_HZ = 100.0  # speech: 250 Hz and more; a pure tone (steady or beeping): ~25
FRAME_S, HOP_S = 0.025, 0.010


@dataclasses.dataclass(frozen=True)
class Activity:
    """What the check measured (for messages and tuning)."""

    peak_abs: float  # the largest |sample|
    peak_dbfs: float  # RMS level of the loudest frame, dB relative to full scale
    level_spread_db: float
    bandwidth_hz: float

    def problem(self) -> tuple[str, str] | None:
        """(reason, explanation) when this is not plausible speech, else None."""
        if not self.peak_abs <= MAX_ABS_SAMPLE:
            return ("bad_amplitude", f"samples reach {self.peak_abs:.3g} in absolute value, "
                    f"but audio loads within [-1, 1] (the bound is {MAX_ABS_SAMPLE}): the file "
                    "is not scaled as audio (integer samples stored as float?)")
        if self.peak_dbfs < SILENT_DBFS:
            return ("no_speech", f"the audio is silent (loudest frame {self.peak_dbfs:.0f} "
                    f"dBFS < {SILENT_DBFS:.0f})")
        if self.level_spread_db < MIN_LEVEL_SPREAD_DB:
            return ("no_speech", "the audio is a steady sound, not speech (a tone, square "
                    f"wave, hum, noise?): its level varies by {self.level_spread_db:.2f} dB "
                    f"(speech: >= {MIN_LEVEL_SPREAD_DB})")
        if self.bandwidth_hz < MIN_BANDWIDTH_HZ:
            return ("no_speech", "the audio is a pure tone, not speech: its spectrum is "
                    f"{self.bandwidth_hz:.0f} Hz wide (speech: >= {MIN_BANDWIDTH_HZ:.0f})")
        return None


def _frames(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """[n_frames, frame] overlapping frames (one, zero-padded, for very short audio)."""
    size, hop = max(int(FRAME_S * sample_rate), 2), max(int(HOP_S * sample_rate), 1)
    if len(wave) < size:
        wave = np.pad(wave, (0, size - len(wave)))
    return np.lib.stride_tricks.sliding_window_view(wave, size)[::hop]


def measure(wave: np.ndarray, sample_rate: int) -> Activity:
    """The levels and spectral width of mono `wave` (float, nominally in [-1, 1])."""
    wave = np.asarray(wave, np.float64)
    peak_abs = float(np.max(np.abs(wave))) if wave.size else 0.0
    if not np.isfinite(peak_abs) or peak_abs > MAX_ABS_SAMPLE:
        return Activity(peak_abs, 0.0, 0.0, 0.0)
    frames = _frames(wave - wave.mean(), sample_rate)  # DC carries no speech
    frames = frames - frames.mean(axis=1, keepdims=True)
    level = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-20)
    peak = float(level.max())
    active = level >= peak - ACTIVE_RANGE_DB
    lo, hi = np.percentile(level[active], [10, 90])
    power = np.abs(np.fft.rfft(frames[active] * np.hanning(frames.shape[1]), axis=1)) ** 2
    freqs = np.fft.rfftfreq(frames.shape[1], 1 / sample_rate)
    total = power.sum(axis=1) + 1e-30
    centroid = (power @ freqs) / total
    bandwidth = np.sqrt((power * (freqs[None] - centroid[:, None]) ** 2).sum(axis=1) / total)
    return Activity(peak_abs, peak, float(hi - lo), float(np.median(bandwidth)))


def speech_problem(wave: np.ndarray, sample_rate: int) -> tuple[str, str] | None:
    """("bad_amplitude" | "no_speech", why) when `wave` cannot be the speech of a transcript."""
    return measure(wave, sample_rate).problem()



class LiveVoiceActivity:
    """Which frames of a live stream someone speaks in: the live server's cheap "is the user
    talking" (its timeline, barge-in and latency), not a speech detector (a loud noise counts).

    A fixed level cannot do it: the held-out recordings' background sits anywhere from -47 to
    -38 dBFS and their speech from -25 to -15. A frame is voiced when it is `ABOVE_FLOOR_DB`
    over the stream's floor (the 10th percentile of the last `HISTORY_S` of frame levels), or
    louder than `LOUD_DBFS` whatever the floor (speech from the first frame on, before there
    is a floor to measure)."""

    ABOVE_FLOOR_DB = 10.0
    LOUD_DBFS = -30.0
    QUIET_DBFS = -60.0  # never voiced below this
    HISTORY_S = 5.0

    def __init__(self, frame: int, sample_rate: int):
        self.frame = frame
        self.levels: collections.deque[float] = collections.deque(
            maxlen=max(1, int(self.HISTORY_S * sample_rate / frame)))

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        """``[len(wave) // frame]`` bools for the next stretch of the stream."""
        wave = np.asarray(wave, np.float64)
        frames = wave[:len(wave) // self.frame * self.frame].reshape(-1, self.frame)
        level = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-20)
        self.levels.extend(level.tolist())
        floor = float(np.percentile(self.levels, 10))
        return (level > self.QUIET_DBFS) & ((level > floor + self.ABOVE_FLOOR_DB)
                                            | (level > self.LOUD_DBFS))
