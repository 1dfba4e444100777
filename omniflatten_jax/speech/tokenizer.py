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
from typing import BinaryIO, Protocol

import numpy as np


class SpeechTokenizer(Protocol):
    sample_rate: int  # the rate `encode` works at (other rates are resampled)
    frame_rate: float  # codes per second
    num_codes: int

    def encode(self, wave: np.ndarray, sample_rate: int) -> np.ndarray: ...


class SpeechDecoder(Protocol):
    sample_rate: int

    def decode(self, codes: np.ndarray) -> np.ndarray: ...


Source = str | os.PathLike | BinaryIO  # a file, or its bytes (e.g. from a checkpoint)
LOADERS: dict[str, Callable[[Source], SpeechTokenizer]] = {}


def register(kind: str):
    def wrap(loader):
        LOADERS[kind] = loader
        return loader
    return wrap


def read_kind(source: Source) -> str:
    """Tokenizer files are .npz archives with a JSON `config` entry naming their kind."""
    try:
        with zipfile.ZipFile(source) as z, z.open("config.npy") as f:
            config = json.loads(np.lib.format.read_array(f).item())
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as e:
        raise ValueError(f"{_name(source)} is not a speech tokenizer file ({e})") from None
    return config["kind"]


def _name(source: Source) -> str:
    return "the stored speech tokenizer" if hasattr(source, "read") else os.fspath(source)


def load_speech_tokenizer(source: Source) -> SpeechTokenizer:
    """A tokenizer from its file (a path, or a binary file object holding its bytes)."""
    if not hasattr(source, "read"):
        source = os.fspath(source)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"speech tokenizer {source} does not exist")
    kind = read_kind(source)
    if kind not in LOADERS:
        raise ValueError(
            f"{_name(source)}: unknown speech tokenizer kind {kind!r}; known: {sorted(LOADERS)}")
    if hasattr(source, "seek"):
        source.seek(0)
    return LOADERS[kind](source)
