"""Audio loading with checks: any common format, rate and channel count -> mono float32.

Every failure names the file and says what is wrong, so that a bad corpus entry can be found,
and the data builders can skip-and-count or stop on it by configuration.
"""

from __future__ import annotations

import os

import numpy as np
import soundfile
import soxr


class AudioError(ValueError):
    """An audio file (or array) that cannot be used: unreadable, empty, too short, not finite."""


def to_mono(wave: np.ndarray) -> np.ndarray:
    wave = np.asarray(wave, np.float32)
    return wave.mean(axis=1) if wave.ndim == 2 else wave


def resample(wave: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate:
        return np.asarray(wave, np.float32)
    return soxr.resample(wave, from_rate, to_rate).astype(np.float32)


def check_wave(wave: np.ndarray, sample_rate: int, where: str, min_seconds: float) -> np.ndarray:
    if wave.ndim != 1:
        raise AudioError(f"{where}: expected mono audio, got shape {wave.shape}")
    if wave.size == 0:
        raise AudioError(f"{where}: the audio is empty")
    if not np.isfinite(wave).all():
        raise AudioError(f"{where}: the audio holds NaN or infinite samples")
    seconds = wave.size / sample_rate
    if seconds < min_seconds:
        raise AudioError(f"{where}: {seconds:.3f} s of audio is shorter than the minimum "
                         f"{min_seconds} s")
    return wave


def load_audio(path: str | os.PathLike, sample_rate: int, min_seconds: float = 0.1) -> np.ndarray:
    """Reads `path` (wav, flac, ogg, mp3, ... as libsndfile knows them) at `sample_rate`, mono."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(f"{path}: no such audio file")
    try:
        wave, rate = soundfile.read(path, dtype="float32", always_2d=False)
    except Exception as e:  # libsndfile's errors carry no file name
        raise AudioError(f"{path}: cannot be read as audio ({e})") from None
    wave = resample(to_mono(wave), rate, sample_rate)
    return check_wave(wave, sample_rate, path, min_seconds)


def save_audio(path: str | os.PathLike, wave: np.ndarray, sample_rate: int) -> None:
    """Writes float audio in [-1, 1]; the format follows the extension (.wav, .flac)."""
    soundfile.write(os.fspath(path), np.clip(wave, -1.0, 1.0), sample_rate)
