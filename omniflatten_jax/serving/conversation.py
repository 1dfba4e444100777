"""One caller's side of the server: the audio waiting for the chunk clock, what it was told,
and the timings the page shows. No network and no model here (`engine` steps the model,
`app` owns the socket); everything is per conversation, so nothing leaks between callers."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np

from omniflatten_jax.serving.protocol import SAMPLE_RATE, CloseCode, ProtocolError
from omniflatten_jax.speech.activity import LiveVoiceActivity


@dataclasses.dataclass
class Chunk:
    """One chunk of the user's audio as the clock took it."""

    audio: np.ndarray
    late: bool  # padded with silence: the client's audio had not all arrived
    completed: float  # when its last sample arrived (the tick's time if it was late)


class Conversation:
    """A caller on a slot (a row of the duplex session). It joins the chunk clock at the first
    tick with a whole chunk of its audio waiting, so that a conversation hears exactly the
    audio it sent from its first sample, whenever it connected."""

    def __init__(self, number: int, slot: int, seed: int | None, *, chunk_samples: int,
                 buffer_samples: int, max_chunks: int, frame_samples: int):
        self.number, self.slot, self.seed = number, slot, seed
        self.chunk_samples, self.buffer_samples = chunk_samples, buffer_samples
        self.max_chunks = max_chunks
        self.outbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.pending: list[np.ndarray] = []
        self.waiting = 0  # samples received, not yet taken
        self.completed: list[float] = []  # when each whole chunk waiting completed
        self.admitted = 0.0  # when it took its slot (the engine's clock)
        self.joined = False  # the session row is started: the clock steps it every tick
        self.chunks = 0  # chunks stepped
        self.late = 0
        self.ending: str | None = None  # why it ends, once it does
        self.close_code = CloseCode.NORMAL  # the socket's, when it closes
        self.assistant_speaking = False
        self.voice = LiveVoiceActivity(frame_samples, SAMPLE_RATE)  # the user's, per frame
        self.user_stopped_at: float | None = None  # the user went quiet, no answer yet

    def receive(self, samples: np.ndarray, now: float) -> None:
        """Audio from the client; more than the buffer bound waiting is refused."""
        if self.waiting + len(samples) > self.buffer_samples:
            seconds = self.buffer_samples / self.chunk_samples
            raise ProtocolError(CloseCode.POLICY, f"more than {seconds:g} chunks of audio "
                                "would wait for the chunk clock: the client sends faster than "
                                "real time, or the server is behind (a step longer than a "
                                "chunk: fewer --sessions)")
        self.pending.append(samples)
        before = self.waiting // self.chunk_samples
        self.waiting += len(samples)
        self.completed.extend([now] * (self.waiting // self.chunk_samples - before))

    @property
    def ready(self) -> bool:
        return self.waiting >= self.chunk_samples

    def take(self, now: float) -> Chunk:
        """The next chunk of audio, padded with silence when not all of it arrived."""
        audio = np.concatenate(self.pending) if self.pending else np.zeros(0, np.float32)
        chunk, rest = audio[:self.chunk_samples], audio[self.chunk_samples:]
        self.pending = [rest] if len(rest) else []
        self.waiting = len(rest)
        late = len(chunk) < self.chunk_samples
        completed = now if late else self.completed.pop(0)
        if late:
            self.late += 1
            chunk = np.pad(chunk, (0, self.chunk_samples - len(chunk)))
        self.chunks += 1
        return Chunk(chunk.astype(np.float32), late, completed)

    def send(self, item: str | bytes) -> None:
        self.outbox.put_nowait(item)

    def finish(self, reason: str) -> None:
        """Ends the conversation once (the first reason stands); the socket closes after what
        is queued for it."""
        if self.ending is None:
            self.ending = reason
