"""A recording streamed through a duplex model as if live, its outputs written as they come.

`stream_recording` is the file adapter of the duplex session (`inference.session`): it reads
the user's audio block by block (`UserSpeech`), feeds it chunk by chunk to a one-row
`DuplexSession` (each chunk decoded before the next is fed, as a live system would, and timed),
and hands each chunk's generated streams straight to the writers of the files the duplex
command promises:

* ``output.wav``: the assistant channel, time-synchronous with the input and of its exact
  duration (Full-Duplex-Bench's per-sample contract); silence where the assistant is silent,
  each spoken stretch decoded by the speech tokenizer's decoder (`AssistantAudio`);
* ``assistant_text.txt`` / ``.json``: the assistant text stream, one line per turn, stamped
  with the start of the chunk its first token was generated in (and ``user_text`` too, for
  duplex_4, where the model transcribes the user) (`TextTurns`);
* ``events.json``: when the assistant took the turn and yielded it, and the decode latency
  per chunk (compilation happens before the first chunk and is reported apart);
* ``timeline.png``: both channels over time (waveforms, speech/silence, text).

Memory does not grow with the recording: nothing holds the whole input, the whole output or
every chunk's tokens. The input is read, resampled and tokenized a block at a time, output.wav
and the text and event files are appended to as turns end, the latency is summarised online
(`session.LatencyStats`) and the timeline keeps a fixed number of columns
(`timeline.Timeline`). What is held is the decoder's context, one spoken stretch (at most
`MAX_DECODE_FRAMES`) and one block of input.
"""

from __future__ import annotations

import array
import json
import os
import tempfile
from collections.abc import Callable, Iterator

import numpy as np
import soundfile
import soxr

from omniflatten_jax.config import to_dict
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.inference.duplex import DuplexModel
from omniflatten_jax.inference.live import samples_per_frame, voice
from omniflatten_jax.inference.session import DuplexSession
from omniflatten_jax.inference.timeline import Timeline
from omniflatten_jax.speech.audio import AudioError
from omniflatten_jax.speech.tokenizer import SpeechDecoder, SpeechTokenizer
from omniflatten_jax.tokens.sequence import Stream
from omniflatten_jax.tokens.text_tokenizers import text_tokenizer

MIN_SECONDS = 0.1  # shorter input is an error, as everywhere audio is loaded
READ_SECONDS = 5.0  # input read from the file this much at a time
BLOCK_FRAMES = 750  # speech frames tokenized at a time (30 s at 25 Hz)
CONTEXT_FRAMES = 25  # audio either side of a block the tokenizer also sees (1 s at 25 Hz)
MAX_DECODE_FRAMES = 750  # a longer spoken stretch is decoded in pieces this long (30 s)
FORMATS = "wav, flac, ogg or mp3"  # what libsndfile reads, as the fix names it


def prepare_out_dir(out_dir: str) -> str:
    """Creates `out_dir` and proves a file can be written there, before any slow work: a
    mistyped or read-only folder must fail in a second, not after decoding an hour."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir) as probe:
            probe.write(b"probe")
    except OSError as e:
        raise OSError(f"--out_dir {out_dir} cannot be written ({e.strerror or e}): choose a "
                      "folder you can write to") from None
    return out_dir


def check_recording(path: str) -> None:
    """Fails fast, before the model loads, on an input that is missing, not audio libsndfile
    can read, or too short."""
    if not os.path.isfile(path):
        raise AudioError(f"{path}: no such audio file; check the --input path")
    try:
        info = soundfile.info(path)
    except Exception as e:  # noqa: BLE001  libsndfile's errors carry no file name
        raise AudioError(f"{path}: cannot be read as audio ({' '.join(str(e).split())}); give "
                         f"a {FORMATS} file (convert others with ffmpeg)") from None
    if info.frames / info.samplerate < MIN_SECONDS:
        raise AudioError(f"{path}: {info.frames / info.samplerate:.3f} s of audio is shorter "
                         f"than the minimum {MIN_SECONDS} s; give a longer recording")


class UserSpeech:
    """The recording as speech codes, a block at a time: read, mixed to mono, resampled (one
    streaming resampler: the same samples as resampling the whole file) and tokenized block
    by block, so that memory does not grow with its length.

    Each block of `BLOCK_FRAMES` frames is tokenized with `CONTEXT_FRAMES` of audio either side
    and only its own frames are kept: for a tokenizer whose frames see less audio around them
    than that (the k-means log-mel one: half an FFT window, 32 ms), the codes are exactly those
    of tokenizing the whole file at once."""

    def __init__(self, path: str, tokenizer: SpeechTokenizer,
                 on_samples: Callable[[np.ndarray], None] = lambda samples: None):
        self.path, self.tokenizer, self.on_samples = path, tokenizer, on_samples
        self.rate = tokenizer.sample_rate
        self.hop = samples_per_frame(tokenizer)
        self.samples = 0  # read so far, at the tokenizer's rate
        self.finished = False  # the whole file is read: `samples` is its length

    def codes(self) -> Iterator[np.ndarray]:
        """Yields the speech codes in order, a block at a time."""
        buffer = np.zeros(0, np.float32)  # the samples held (context and the next block)
        start = 0  # which sample of the recording buffer[0] is: a whole frame's first
        first = 0  # the next frame to yield
        for samples in self._samples():
            buffer = np.concatenate([buffer, samples])
            while start + len(buffer) >= (first + BLOCK_FRAMES + CONTEXT_FRAMES) * self.hop:
                end = (first + BLOCK_FRAMES + CONTEXT_FRAMES) * self.hop - start
                yield self._encode(buffer[:end], start, first, BLOCK_FRAMES)
                first += BLOCK_FRAMES
                keep = max(first - CONTEXT_FRAMES, 0) * self.hop
                buffer, start = buffer[keep - start:], keep
        self.finished = True
        if self.samples < MIN_SECONDS * self.rate:
            raise AudioError(f"{self.path}: {self.samples / self.rate:.3f} s of audio is shorter "
                             f"than the minimum {MIN_SECONDS} s; give a longer recording")
        if start + len(buffer) > first * self.hop:
            yield self._encode(buffer, start, first, None)

    def _encode(self, wave: np.ndarray, start: int, first: int, n: int | None) -> np.ndarray:
        codes = self.tokenizer.encode(wave, self.rate)
        lo = first - start // self.hop
        return codes[lo:] if n is None else codes[lo:lo + n]

    def _samples(self) -> Iterator[np.ndarray]:
        """Mono float32 at the tokenizer's rate, in blocks, checked as they come."""
        try:
            with soundfile.SoundFile(self.path) as f:
                rate = f.samplerate
                resampler = (None if rate == self.rate
                             else soxr.ResampleStream(rate, self.rate, 1, dtype="float32"))
                for block in f.blocks(int(READ_SECONDS * rate), dtype="float32",
                                      always_2d=True):
                    yield self._checked(block.mean(axis=1), resampler, last=False)
                if resampler is not None:
                    yield self._checked(np.zeros(0, np.float32), resampler, last=True)
        except soundfile.SoundFileError as e:
            raise AudioError(f"{self.path}: cannot be read as audio after "
                             f"{self.samples / self.rate:.1f} s ({' '.join(str(e).split())}); "
                             f"give a {FORMATS} file that is not truncated") from None

    def _checked(self, mono: np.ndarray, resampler, last: bool) -> np.ndarray:
        if not np.isfinite(mono).all():
            raise AudioError(f"{self.path}: the audio holds NaN or infinite samples after "
                             f"{self.samples / self.rate:.1f} s; give a clean recording")
        if resampler is not None:
            mono = resampler.resample_chunk(mono, last=last)
        mono = np.asarray(mono, np.float32)
        self.samples += len(mono)
        self.on_samples(mono)
        return mono


def user_chunks(user: UserSpeech, layout: TokenLayout, width: int
                ) -> Iterator[tuple[np.ndarray, int]]:
    """``(ids [width], frames of the recording in them)`` chunk by chunk; the last chunk is
    completed with <silent_speech>, as `tokens.dialogue_chunks.pad_to_chunks` does."""
    pending = np.zeros(0, np.int32)
    for codes in user.codes():
        pending = np.concatenate([pending, layout.speech_ids(codes).astype(np.int32)])
        while len(pending) >= width:
            yield pending[:width], width
            pending = pending[width:]
    if len(pending):
        silent = np.full(width - len(pending), layout.special("<silent_speech>"), np.int32)
        yield np.concatenate([pending, silent]), len(pending)


class JsonList:
    """A JSON list written item by item, flushed, so a turn is on disk when it ends and none
    is held; optionally the value of `key` in an object that `close` completes."""

    def __init__(self, path: str, key: str | None = None):
        self.file = open(path, "w", encoding="utf-8")
        self.key, self.items = key, 0
        self.file.write(f'{{\n  {json.dumps(key)}: [' if key else "[")

    def add(self, item: dict) -> None:
        indent = "\n    " if self.key else "\n  "
        self.file.write(("," if self.items else "") + indent
                        + json.dumps(item, ensure_ascii=False))
        self.file.flush()
        self.items += 1

    def close(self, rest: dict | None = None) -> None:
        self.file.write("\n]" if self.key is None else "\n  ]")
        for k, v in (rest or {}).items():
            self.file.write(f",\n  {json.dumps(k)}: {json.dumps(v)}")
        self.file.write("\n}\n" if self.key else "\n")
        self.file.close()


class AssistantAudio:
    """output.wav written as the chunks come: zeros while the assistant is silent, each spoken
    stretch decoded when it ends (a longer one every `MAX_DECODE_FRAMES`) and written in place,
    clipped to its frames so the file stays time-synchronous with the input. Reports the
    stretches' edges as took_turn / yielded events."""

    def __init__(self, path: str, sample_rate: int, frame_rate: float, decoder: SpeechDecoder,
                 layout: TokenLayout, on_event: Callable[[str, int], None],
                 on_samples: Callable[[np.ndarray], None] = lambda samples: None):
        self.file = soundfile.SoundFile(path, "w", samplerate=sample_rate, channels=1)
        self.hop = sample_rate / frame_rate
        self.decoder, self.layout = decoder, layout
        self.on_event, self.on_samples = on_event, on_samples
        self.silent = layout.special("<silent_speech>")
        self.frame = 0  # frames received
        self.written = 0  # samples in the file
        self.limit: int | None = None  # the input's length, once known
        self.speaking = False
        self.run_start, self.run = 0, array.array("i")  # the stretch not yet decoded

    def add(self, ids: np.ndarray, limit: int | None = None) -> None:
        """The assistant speech ids of the next frames; `limit`: the input's length in samples
        when known (the file never runs past it)."""
        self.limit = limit
        for i, token in enumerate(np.asarray(ids).tolist()):
            frame = self.frame + i
            if token != self.silent:
                if not self.speaking:
                    self.speaking, self.run_start = True, frame
                    self.on_event("took_turn", frame)
                self.run.append(token)
                if len(self.run) == MAX_DECODE_FRAMES:
                    self._flush(frame + 1)
            elif self.speaking:
                self.speaking = False
                self.on_event("yielded", frame)
                self._flush(frame)
        self.frame += len(ids)
        if not self.speaking:
            self._silence_until(round(self.frame * self.hop))

    def close(self, total: int) -> int:
        """Ends the file at exactly `total` samples (the input's length); returns it."""
        self.limit = total
        if self.speaking:
            self.on_event("yielded", self.frame)
            self._flush(self.frame)
        self._silence_until(total)
        if self.written > total:  # the limit came late (`add` without it): cut the tail
            self.file.truncate(total)
            self.written = total
        self.file.close()
        return self.written

    def _flush(self, end: int) -> None:
        """Decodes the held stretch (frames ``run_start`` to `end`) and writes it in place."""
        if self.run:
            lo, hi = round(self.run_start * self.hop), round(end * self.hop)
            self._silence_until(lo)
            wave = self._decode(np.frombuffer(self.run, np.int32))[:hi - lo]
            self._write(np.pad(wave, (0, hi - lo - len(wave))))
        self.run_start, self.run = end, array.array("i")

    def _decode(self, ids: np.ndarray) -> np.ndarray:
        return voice(self.decoder, self.layout, ids)

    def _silence_until(self, sample: int) -> None:
        step = 1 << 16
        while self.written < sample and self._room():
            self._write(np.zeros(min(sample - self.written, step), np.float32))

    def _room(self) -> bool:
        return self.limit is None or self.written < self.limit

    def _write(self, samples: np.ndarray) -> None:
        if self.limit is not None:
            samples = samples[:max(self.limit - self.written, 0)]
        samples = np.clip(samples, -1.0, 1.0)
        self.file.write(samples)
        self.on_samples(samples)
        self.written += len(samples)


class TextTurns:
    """One text stream cut into turns at [EOT]; each turn is written (a .txt line, a .json
    item) when it ends, with the times of the chunks of its first and last tokens."""

    def __init__(self, key: str, out_dir: str, layout: TokenLayout, chunk_seconds: float,
                 on_turn: Callable[[str, dict], None]):
        self.key, self.layout, self.on_turn = key, layout, on_turn
        self.chunk_seconds = chunk_seconds
        self.silent, self.eot = layout.special("<silent_text>"), layout.special("[EOT]")
        self.tokenizer = text_tokenizer(layout)
        self.txt = open(os.path.join(out_dir, f"{key}.txt"), "w", encoding="utf-8")
        self.json = JsonList(os.path.join(out_dir, f"{key}.json"))
        self.ids, self.first = array.array("i"), None

    def add(self, chunk: int, row: np.ndarray) -> None:
        for token in np.asarray(row).tolist():
            if token == self.eot:
                self._end_turn(chunk)
            elif token != self.silent:
                self.first = chunk if self.first is None else self.first
                self.ids.append(token)

    def close(self, last_chunk: int) -> None:
        self._end_turn(last_chunk)
        self.txt.close()
        self.json.close()

    def _end_turn(self, last_chunk: int) -> None:
        if self.ids:
            text = self.tokenizer.decode([i for i in self.ids if self.layout.is_text(i)])
            turn = {"start_s": round(self.first * self.chunk_seconds, 3),
                    "end_s": round((last_chunk + 1) * self.chunk_seconds, 3), "text": text}
            self.json.add(turn)
            self.txt.write(f"[{turn['start_s']:7.2f} s] {text}\n")
            self.txt.flush()
            self.on_turn(self.key, turn)
        self.ids, self.first = array.array("i"), None


def stream_recording(model: DuplexModel, audio_path: str, out_dir: str, *, title: str = ""
                     ) -> dict:
    """Decodes `audio_path` (any format, rate, channel count) chunk by chunk under the model's
    policy and writes the files (module docstring) into `out_dir`; returns the summary
    events.json ends with. The model's speech tokenizer reads the user and voices the
    assistant."""
    layout, chunk = model.layout, model.chunk
    tokenizer = decoder = model.speech
    width = chunk.streams[0][1]
    chunk_seconds = width / tokenizer.frame_rate
    timeline = Timeline(tokenizer.sample_rate, tokenizer.frame_rate, chunk_seconds)
    user = UserSpeech(audio_path, tokenizer, timeline.user.add)
    session = DuplexSession(model, 1)
    compile_s = session.compile()
    session.start(0)
    events = JsonList(os.path.join(out_dir, "events.json"), key="events")
    audio = AssistantAudio(
        os.path.join(out_dir, "output.wav"),  # FDB's name: the harness reads it as it is
        tokenizer.sample_rate, tokenizer.frame_rate,
        decoder, layout, lambda kind, frame: events.add(
            {"event": kind, "time_s": round(frame / tokenizer.frame_rate, 3)}),
        timeline.assistant.add)
    texts = [TextTurns(s.key, out_dir, layout, chunk_seconds, timeline.add_turn)
             for s in (Stream.ASSISTANT_TEXT, Stream.USER_TEXT) if s.key in chunk.keys]
    n = 0
    for n, (ids, frames) in enumerate(user_chunks(user, layout, width), start=1):
        streams = chunk.unflatten(np.concatenate([ids, session.step(ids[None])[0]]))
        speech = streams[Stream.ASSISTANT_SPEECH.key][0, :frames]
        timeline.speaking.add(speech != layout.special("<silent_speech>"))
        audio.add(speech, user.samples if user.finished else None)
        for text in texts:
            rows = streams[text.key][0]
            timeline.text[text.key].add([np.any(rows != text.silent)])
            text.add(n - 1, rows)
    written = audio.close(user.samples)
    for text in texts:
        text.close(n - 1)
    summary = _summary(session, user.samples, written, tokenizer.sample_rate, chunk_seconds,
                       compile_s)
    events.close(summary)
    timeline.plot(os.path.join(out_dir, "timeline.png"), title)
    return summary


def _summary(model: DuplexSession, samples: int, written: int, rate: int,
             chunk_seconds: float, compile_s: float) -> dict:
    latency = model.latency
    chunk_audio_ms = 1000 * chunk_seconds
    return {
        "input_seconds": round(samples / rate, 3),
        "output_seconds": round(written / rate, 3),
        "chunks": latency.count, "chunk_audio_ms": chunk_audio_ms,
        "context_slides": model.slides, "compile_seconds": round(compile_s, 2),
        "decoding": to_dict(model.policy),
        "latency_ms": {"mean": round(latency.mean_ms, 2),
                       "p95": round(latency.percentile(95), 2),
                       "max": round(latency.max_ms, 2)},
        "real_time_factor": round(latency.mean_ms / chunk_audio_ms, 4),
    }
