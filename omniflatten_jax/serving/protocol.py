"""The wire protocol of a live conversation: one WebSocket, JSON text messages and binary audio.

Version 1 (README, "Talking to a model"). The client opens ``/ws`` and sends

    {"type": "hello", "protocol": 1, "sample_rate": 16000, "seed": 7}   (seed optional)

then its microphone as binary messages of 16-bit little-endian mono PCM at that rate, any
whole number of samples per message (the page sends 40 ms), and ``{"type": "end"}`` to hang
up. The server answers ``ready`` (or ``refused``, then closes) and then, per chunk of the
model, a ``chunk`` message followed by one binary message: the assistant's audio for that
chunk in the same PCM format. Other server messages: ``late`` (the client's audio did not
arrive in time; the chunk was padded with silence), ``barge_in`` (the model stopped speaking
because the user cut in: drop the audio queued for playback), ``latency`` and ``end`` (with
the reason, just before the server closes).

Audio is plain 16-bit PCM: no wheel we install gives an Opus encoder without a system
library, and at 16 kHz PCM is 256 kbit/s each way, nothing on a LAN or loopback.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

VERSION = 1
SAMPLE_RATE = 16_000
BYTES_PER_SAMPLE = 2


class CloseCode:
    """WebSocket close codes (RFC 6455 section 7.4.1) the server closes with."""

    NORMAL = 1000
    GOING_AWAY = 1001  # the server is shutting down
    UNSUPPORTED = 1003  # a message of a kind the protocol does not have
    INVALID = 1007  # a message that does not parse
    POLICY = 1008  # too fast, too long, wrong order
    TOO_BIG = 1009
    INTERNAL = 1011  # the server failed a step
    TRY_AGAIN_LATER = 1013  # every slot is busy


class ProtocolError(Exception):
    """A client broke the protocol: its conversation closes with `code` and `reason`."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


def parse_text(data: str, max_bytes: int) -> dict[str, Any]:
    """A client's text message -> its dict, or `ProtocolError` saying what is wrong."""
    if len(data.encode()) > max_bytes:
        raise ProtocolError(CloseCode.TOO_BIG, f"a text message of {len(data.encode())} bytes "
                            f"is over the limit of {max_bytes}")
    try:
        message = json.loads(data)
    except json.JSONDecodeError as e:
        raise ProtocolError(CloseCode.INVALID, f"a text message must be JSON: {e}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError(CloseCode.INVALID, 'a text message must be a JSON object with a '
                            '"type"')
    if message["type"] not in ("hello", "end"):
        raise ProtocolError(CloseCode.UNSUPPORTED, f'unknown message type {message["type"]!r} '
                            '(a client sends "hello", binary audio, "end")')
    return message


def check_hello(message: dict[str, Any]) -> int | None:
    """A ``hello`` -> the seed it asks for (None: the server's); a mismatch is refused."""
    if message["type"] != "hello":
        raise ProtocolError(CloseCode.POLICY, 'the first message must be {"type": "hello", '
                            f'"protocol": {VERSION}, ...}}')
    if message.get("protocol") != VERSION:
        raise ProtocolError(CloseCode.POLICY, f"this server speaks protocol {VERSION}, the "
                            f"client asked for {message.get('protocol')!r}")
    if message.get("sample_rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise ProtocolError(CloseCode.POLICY, f"audio must be {SAMPLE_RATE} Hz 16-bit mono "
                            f"PCM, the client offered {message.get('sample_rate')!r} Hz")
    seed = message.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)
                             or not 0 <= seed < 2 ** 31):
        raise ProtocolError(CloseCode.INVALID, f"seed must be an integer in [0, 2**31), got "
                            f"{seed!r}")
    return seed


def pcm_to_float(data: bytes, max_bytes: int) -> np.ndarray:
    """A client's binary message -> float32 samples in [-1, 1]."""
    if len(data) > max_bytes:
        raise ProtocolError(CloseCode.TOO_BIG, f"an audio message of {len(data)} bytes is over "
                            f"the limit of {max_bytes}")
    if len(data) % BYTES_PER_SAMPLE:
        raise ProtocolError(CloseCode.INVALID, f"audio must be 16-bit PCM: {len(data)} bytes "
                            "is not a whole number of samples")
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0


def float_to_pcm(audio: np.ndarray) -> bytes:
    return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def message(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))
