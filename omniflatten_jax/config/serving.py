"""The live server's settings (`serving`): one frozen section, read by the server, its command
(`experiments/serve.py`, whose flags are these fields) and its benchmark."""

from __future__ import annotations

import dataclasses

from omniflatten_jax.config.rules import require as _require

LOOPBACK = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """How the live server listens, admits and bounds conversations.

    Safe by default: it listens on the loopback interface only, and every bound is finite. A
    conversation is a slot of the duplex session (one batch row), so ``sessions`` is both the
    number of callers at once and the batch of the one compiled step they share."""

    host: str = LOOPBACK
    port: int = 8998
    sessions: int = 8  # slots: conversations at once; one more is refused, never slowed
    token: str = ""  # when set, /ws and /metrics need ?token= or "Authorization: Bearer"
    allowed_origins: tuple[str, ...] = ()  # pages on other origins that may connect
    max_seconds: float = 600.0  # a conversation's longest length; then it ends, with a reason
    buffer_seconds: float = 2.0  # user audio held ahead of the chunk clock; more is refused
    max_message_bytes: int = 64_000  # one WebSocket message (2 s of 16-bit audio at 16 kHz)

    def __post_init__(self):
        _require(1 <= self.port <= 65535, "serve.port", self.port, "a TCP port (1-65535)")
        _require(self.sessions >= 1, "serve.sessions", self.sessions, "at least 1")
        _require(self.max_seconds > 0, "serve.max_seconds", self.max_seconds, "positive")
        _require(self.buffer_seconds > 0, "serve.buffer_seconds", self.buffer_seconds,
                 "positive")
        _require(self.max_message_bytes >= 1024, "serve.max_message_bytes",
                 self.max_message_bytes, "at least 1024")
        for origin in self.allowed_origins:
            _require(origin.startswith(("http://", "https://")), "serve.allowed_origins",
                     origin, "origins like https://example.org")
