"""Many conversations, one step: the duplex session's rows are slots, advanced together by
a chunk clock.

Every ``chunk_seconds`` (400 ms) the clock takes one chunk of audio from each open
conversation, runs one `LiveSession.step` for all of them (the model and the streaming
speech decode, in a worker thread so the sockets keep flowing) and queues each caller's
reply. A conversation takes a free slot when it connects and joins the clock when a whole
chunk of its audio has arrived; a caller whose audio is late is padded with silence and
told; when every slot is busy a new caller is refused at once, so the callers already in
are never slowed down. Ending a conversation frees its row between steps; a row that
starts again never disturbs the others (each row has its own cache cursor and key).

A lockstep clock has one phase for everybody: a caller's chunk waits from its last sample
to the next tick, between nothing and one chunk (half on average). The ``latency``
message reports that wait apart from the server's own time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time

import numpy as np

from omniflatten_jax.config.serving import ServeConfig
from omniflatten_jax.inference.live import LiveSession
from omniflatten_jax.serving.conversation import Conversation
from omniflatten_jax.serving.metrics import Metrics
from omniflatten_jax.serving.protocol import SAMPLE_RATE, CloseCode, float_to_pcm, message
from omniflatten_jax.tokens.sequence import Stream

log = logging.getLogger(__name__)
FIRST_AUDIO_S = 10.0  # a caller holds a slot this long before its first chunk must be in


class Busy(Exception):
    """Every slot holds a conversation."""


class Engine:
    def __init__(self, live: LiveSession, cfg: ServeConfig, metrics: Metrics | None = None,
                 clock=time.monotonic):
        if live.tokenizer.sample_rate != SAMPLE_RATE:
            raise ValueError(f"the server speaks {SAMPLE_RATE} Hz audio; this model's speech "
                             f"tokenizer runs at {live.tokenizer.sample_rate} Hz")
        self.live, self.cfg, self.clock = live, cfg, clock
        self.metrics = metrics or Metrics(live.rows)
        self.slots: list[Conversation | None] = [None] * live.rows
        self.started = 0
        self.period = live.chunk_seconds
        self.max_chunks = max(1, int(cfg.max_seconds / self.period))
        self.worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="step")
        self.busy_ms = 0.0  # the last tick's work: its step, replies and slides

    # Slots.

    def admit(self, seed: int | None) -> Conversation:
        """A new conversation on a free slot, or `Busy`."""
        free = [i for i, c in enumerate(self.slots) if c is None]
        if not free:
            self.metrics.refused["busy"] += 1
            raise Busy(f"all {len(self.slots)} conversations of this server are in use; try "
                       "again later")
        self.started += 1
        conversation = Conversation(
            self.started, free[0], seed,
            chunk_samples=self.live.chunk_samples,
            buffer_samples=int(self.cfg.buffer_seconds * SAMPLE_RATE) + self.live.chunk_samples,
            max_chunks=self.max_chunks, frame_samples=self.live.hop)
        conversation.admitted = self.clock()
        self.slots[free[0]] = conversation
        self.metrics.conversations += 1
        self.metrics.slots_in_use = sum(c is not None for c in self.slots)
        return conversation

    def ready_message(self, conversation: Conversation) -> str:
        return message("ready", protocol=1, sample_rate=SAMPLE_RATE,
                       chunk_samples=self.live.chunk_samples, frames_per_chunk=self.live.width,
                       audio_delay_samples=self.live.audio_delay, slot=conversation.slot,
                       seed=self.live.session.policy.seed if conversation.seed is None
                       else conversation.seed, max_seconds=self.cfg.max_seconds,
                       buffer_seconds=self.cfg.buffer_seconds, stage=self.live.model.stage,
                       text=Stream.ASSISTANT_TEXT.key in self.live.keys)

    def hang_up(self, conversation: Conversation, reason: str) -> None:
        """From a socket: the conversation ends. A row in the session is ended by the clock
        before its next step (a step may be running in the worker now); a caller that never
        joined the clock has no row, and its slot is free at once."""
        conversation.finish(reason)
        if not conversation.joined:
            self.release(conversation, reason)

    def release(self, conversation: Conversation, reason: str) -> None:
        """Frees the conversation's slot; only between steps (the clock's task, or `hang_up`
        for a caller without a row)."""
        conversation.finish(reason)
        if self.slots[conversation.slot] is conversation:
            if conversation.joined:
                self.live.end(conversation.slot)
            self.slots[conversation.slot] = None
            self.metrics.closed[reason.split(":")[0]] += 1
            self.metrics.slots_in_use = sum(c is not None for c in self.slots)
            conversation.send(None)  # the socket closes after what is queued

    # The clock.

    async def run(self) -> None:
        """Steps every open conversation once per chunk until cancelled."""
        loop = asyncio.get_running_loop()
        next_tick = self.clock()
        while True:
            next_tick += self.period
            try:
                await self.tick(loop)
            except Exception as e:  # a failed step ends its callers, never the clock
                log.exception("a step failed; its conversations end")
                reason = f"error: the server failed a step ({type(e).__name__}: {e})"
                for conversation in [c for c in self.slots if c is not None and c.joined]:
                    conversation.close_code = CloseCode.INTERNAL
                    conversation.send(message("end", reason=reason))
                    self.release(conversation, reason)
            delay = next_tick - self.clock()
            if delay < 0:  # the step overran its chunk: start again from now, never catch up
                next_tick = self.clock()
            await asyncio.sleep(max(delay, 0.0))

    async def tick(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        loop = loop or asyncio.get_running_loop()
        for conversation in [c for c in self.slots if c is not None and c.ending]:
            self.release(conversation, conversation.ending)
        now = self.clock()
        for conversation in [c for c in self.slots if c is not None and not c.joined]:
            if now - conversation.admitted > FIRST_AUDIO_S and not conversation.ready:
                reason = (f"limit: no whole chunk of audio within {FIRST_AUDIO_S:g} s of "
                          "\"ready\": the slot goes to the next caller")
                conversation.close_code = CloseCode.POLICY
                conversation.send(message("end", reason=reason))
                self.release(conversation, reason)
        audio, chunks = {}, {}
        for conversation in [c for c in self.slots if c is not None]:
            if not conversation.joined:
                if not conversation.ready:
                    continue
                self.live.start(conversation.slot, conversation.seed)
                conversation.joined = True
            chunk = conversation.take(now)
            audio[conversation.slot], chunks[conversation.slot] = chunk.audio, chunk
        if not audio:
            return
        started = self.clock()
        replies = await loop.run_in_executor(self.worker, self.live.step, audio)
        sent = self.clock()
        self.metrics.observe_step(sent - started)
        for slot, reply in replies.items():
            self._deliver(self.slots[slot], chunks[slot], reply, tick=now, sent=sent,
                          step_seconds=sent - started)
        # The slides due before the next step, after the replies: off the reply's path.
        await loop.run_in_executor(self.worker, self.live.prepare)
        self.busy_ms = round(1000 * (self.clock() - started), 1)

    def _deliver(self, conversation: Conversation, chunk, reply, *, tick: float, sent: float,
                 step_seconds: float) -> None:
        hop, rate = self.live.hop, SAMPLE_RATE
        self.metrics.chunks += 1
        index = conversation.chunks - 1
        if chunk.late:
            self.metrics.chunks_late += 1
            conversation.send(message("late", index=index, chunks=conversation.late))
        user = conversation.voice(chunk.audio)
        assistant = reply.assistant_ids != self.live.silent
        if conversation.assistant_speaking and not reply.speaking and user.any():
            conversation.send(message("barge_in", index=index))
        if user.any() and not user[-1]:  # the user went quiet inside this chunk
            quiet_from = (np.flatnonzero(user)[-1] + 1) * hop
            conversation.user_stopped_at = chunk.completed - (len(user) * hop - quiet_from) / rate
        elif user.any():
            conversation.user_stopped_at = None
        sounding = np.flatnonzero(reply.audio)
        if conversation.user_stopped_at is not None and len(sounding) \
                and not conversation.assistant_speaking:
            heard = sent + sounding[0] / rate
            conversation.send(message(
                "latency", index=index,
                turn_ms=round(1000 * (heard - conversation.user_stopped_at)),
                first_audio_ms=round(1000 * (self.period + sent - tick
                                             + self.live.audio_delay / rate)),
                clock_wait_ms=round(1000 * (tick - chunk.completed))))
            conversation.user_stopped_at = None
        conversation.assistant_speaking = reply.speaking
        conversation.send(message(
            "chunk", index=index, speaking=reply.speaking, text=reply.text,
            user_text=reply.user_text, user=_bits(user), assistant=_bits(assistant),
            late=chunk.late,
            step_ms=round(1000 * step_seconds, 1), busy_ms=self.busy_ms,
            time=round(time.time(), 3)))
        conversation.send(float_to_pcm(reply.audio))
        if conversation.chunks >= conversation.max_chunks:
            reason = (f"limit: the conversation reached this server's limit of "
                      f"{self.cfg.max_seconds:g} s")
            conversation.send(message("end", reason=reason))
            self.release(conversation, reason)

    def close_all(self, reason: str) -> None:
        """Shutting down: every caller is told why and its socket closes. The session's rows
        are left as they are (a step may still be running; the process is about to exit)."""
        for slot, conversation in enumerate(self.slots):
            if conversation is not None:
                conversation.send(message("end", reason=reason))
                conversation.finish(reason)
                conversation.send(None)
                self.slots[slot] = None
                self.metrics.closed[reason.split(":")[0]] += 1
        self.metrics.slots_in_use = 0


def _bits(flags: np.ndarray) -> str:
    """Per-frame flags as a string of 0 and 1 (the page's timeline)."""
    return "".join("1" if flag else "0" for flag in flags.tolist())
