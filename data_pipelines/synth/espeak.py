"""Speech synthesis with eSpeak NG, from the `espeakng-loader` wheel (no system packages).

eSpeak is a formant synthesiser: robotic, but real speech, about 1,000x faster than real time
on a CPU, with voices and variants (pitch, rate) to give several distinct speakers, and word
events that give word start times. The library is a process-wide singleton, so `Synthesizer`
serialises calls with a lock.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import threading

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_CHARS_UTF8 = 1
POS_CHARACTER = 1
EVENT_WORD = 1
PARAM_RATE, PARAM_PITCH, PARAM_RANGE = 1, 3, 4
RAND_SEED = 1
# Part of the input fingerprint of synthesised corpora (`data_pipelines.inputs`).
REVISION = "fresh library per corpus entry, rand seed 1"


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


@dataclasses.dataclass(frozen=True)
class Voice:
    """An eSpeak voice name (e.g. "en-us", "en+f3") with words-per-minute and pitch (0-100)."""

    name: str
    rate: int = 165
    pitch: int = 50


@dataclasses.dataclass(frozen=True)
class Utterance:
    audio: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    word_starts: np.ndarray  # seconds at which each word starts
    word_chars: np.ndarray  # [n_words, 2] character offset and length of each word in the text


def _fresh_library(old: ctypes.CDLL | None) -> tuple[ctypes.CDLL, int]:
    """eSpeak NG loaded anew (every C static at its initial value) and initialised."""
    import espeakng_loader

    if old is not None:
        old.espeak_Terminate()
        libc = ctypes.CDLL(None)
        libc.dlclose.argtypes = [ctypes.c_void_p]
        if libc.dlclose(old._handle) != 0:
            raise RuntimeError("eSpeak NG could not be unloaded")
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    data_parent = os.path.dirname(espeakng_loader.get_data_path())
    rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent.encode(), 0)
    if rate <= 0:
        raise RuntimeError(f"eSpeak NG failed to initialise (data in {data_parent})")
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                                 ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                 ctypes.c_void_p, ctypes.c_void_p]
    # Its noise (breathy variants) comes from libc's rand(), shared with the whole process.
    lib.espeak_ng_SetRandSeed(ctypes.c_long(RAND_SEED))
    return lib, rate


class Synthesizer:
    _lock = threading.Lock()
    _lib = None
    _sample_rate = 0

    def __init__(self):
        with Synthesizer._lock:
            if Synthesizer._lib is None:
                Synthesizer._lib, Synthesizer._sample_rate = _fresh_library(None)
        self._chunks: list[np.ndarray] = []
        self._words: list[tuple[int, int, int]] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: C holds the pointer

    @classmethod
    def start_afresh(cls) -> None:
        """What is spoken next no longer depends on what this process spoke before."""
        with cls._lock:
            cls._lib, cls._sample_rate = _fresh_library(cls._lib)

    @property
    def sample_rate(self) -> int:
        return Synthesizer._sample_rate

    def _collect(self, wav, n, events):
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != 0:
            if events[i].type == EVENT_WORD:
                e = events[i]
                self._words.append((e.audio_position, e.text_position, e.length))
            i += 1
        return 0

    def speak(self, text: str, voice: Voice) -> Utterance:
        with Synthesizer._lock:
            lib = Synthesizer._lib
            self._chunks, self._words = [], []
            lib.espeak_SetSynthCallback(self._callback)
            if lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise ValueError(f"eSpeak NG has no voice {voice.name!r}")
            lib.espeak_SetParameter(PARAM_RATE, voice.rate, 0)
            lib.espeak_SetParameter(PARAM_PITCH, voice.pitch, 0)
            data = text.encode("utf-8") + b"\0"
            lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
            lib.espeak_Synchronize()
            chunks, words = self._chunks, self._words
        audio = (np.concatenate(chunks) if chunks else np.zeros(0, np.int16)).astype(np.float32)
        starts = np.array([w[0] / 1000.0 for w in words], np.float32)
        # eSpeak's text positions are 1-based character offsets.
        chars = np.array([(w[1] - 1, w[2]) for w in words], np.int32).reshape(-1, 2)
        return Utterance(audio / 32768.0, self.sample_rate, starts, chars)
