"""The speech tokenizer interface, and loading a tokenizer from its file.

A speech tokenizer turns audio into one code per frame at a fixed frame rate; a speech
decoder turns codes back into audio. The embedded default (`KMeansMelTokenizer`) is both.
A pretrained tokenizer (for example CosyVoice's S3 tokenizer as a local ONNX file) plugs in by
implementing `SpeechTokenizer` and registering a loader under its file's ``kind``.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from typing import Protocol

import numpy as np


class SpeechTokenizer(Protocol):
    sample_rate: int  # the rate `encode` works at (other rates are resampled)
    frame_rate: float  # codes per second
    num_codes: int

    def encode(self, wave: np.ndarray, sample_rate: int) -> np.ndarray: ...


class SpeechDecoder(Protocol):
    sample_rate: int

    def decode(self, codes: np.ndarray) -> np.ndarray: ...


LOADERS: dict[str, Callable[[str], SpeechTokenizer]] = {}


def register(kind: str):
    def wrap(loader):
        LOADERS[kind] = loader
        return loader
    return wrap


def read_kind(path: str) -> str:
    """Tokenizer files are .npz archives with a JSON `config` entry naming their kind."""
    try:
        with zipfile.ZipFile(path) as z, z.open("config.npy") as f:
            config = json.loads(np.lib.format.read_array(f).item())
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as e:
        raise ValueError(f"{path} is not a speech tokenizer file ({e})") from None
    return config["kind"]


def load_speech_tokenizer(path: str | os.PathLike) -> SpeechTokenizer:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"speech tokenizer {path} does not exist")
    kind = read_kind(path)
    if kind not in LOADERS:
        raise ValueError(
            f"{path}: unknown speech tokenizer kind {kind!r}; known: {sorted(LOADERS)}")
    return LOADERS[kind](path)
