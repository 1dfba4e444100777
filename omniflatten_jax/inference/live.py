"""Live duplex conversations in audio: a chunk of each user's audio in, the assistant's out.

`LiveSession` is the duplex session (`inference.session`) with the speech tokenizer at both
ends and no file anywhere: each row is a conversation (a caller on a server, a sample of a
benchmark); `step` takes one chunk of audio per active row (``speech_chunk`` frames of the
tokenizer: 400 ms at 25 Hz with 10-frame chunks) and returns, per row, the assistant's audio
for that same chunk, the text it completed, and whether it is speaking. What a caller hears
is what the model decided one chunk ago: the latency of a chunk's step is the system's.

A live caller has no lookahead: each chunk of user audio is tokenized with the row's last
100 ms of audio before it as context (`CONTEXT_SECONDS`) and nothing after it, so the last
frame or so of a chunk (half an analysis window, 32 ms for the k-means tokenizer) may differ
from tokenizing the whole recording at once; the file adapter (`inference.recording`) reads
ahead and is exact. The assistant's speech ids of each chunk are voiced as soon as its step
is done: with the k-means decoder, by a streaming inversion that carries the waveform across
chunk edges (`speech.streaming`; the audio trails the ids by `audio_delay`, half an analysis
window); with another decoder, each chunk's runs of speech on their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.inference.duplex import DuplexModel
from omniflatten_jax.inference.session import DuplexSession
from omniflatten_jax.speech.streaming import StreamingGriffinLim
from omniflatten_jax.speech.tokenizer import SpeechDecoder, SpeechTokenizer
from omniflatten_jax.tokens.sequence import Stream
from omniflatten_jax.tokens.text_tokenizers import text_tokenizer

# Of the user's earlier audio the tokenizer sees with each chunk: more than half an analysis
# window (32 ms for the k-means tokenizer), so that every frame of the chunk but the last is
# analysed over real audio; more only costs time (it was 1 s: 3.5 times the frames).
CONTEXT_SECONDS = 0.1


def samples_per_frame(tokenizer: SpeechTokenizer) -> int:
    """The tokenizer's hop in samples; a rate that gives no whole number is an error."""
    hop = tokenizer.sample_rate / tokenizer.frame_rate
    if hop != int(hop):
        raise ValueError(f"a speech tokenizer at {tokenizer.sample_rate} Hz and "
                         f"{tokenizer.frame_rate} frames/s has no whole number of samples per "
                         "frame")
    return int(hop)


def min_decode_frames(decoder: SpeechDecoder) -> int:
    """The fewest frames `decoder` can turn into audio. Griffin-Lim (the k-means decoder)
    re-analyses its signal with FFT windows of ``n_fft`` samples; the signal of a stretch of
    1 or 2 frames (40-80 ms; a trained model emits such blips) is shorter than one window, and
    librosa warns "n_fft=1024 is too large for input signal" on every run. Other decoders
    take any length."""
    cfg = getattr(decoder, "cfg", None)
    n_fft, hop = getattr(cfg, "n_fft", 0), getattr(cfg, "hop", 0)
    return 1 + -(-n_fft // hop) if n_fft and hop else 1


def voice(decoder: SpeechDecoder, layout: TokenLayout, ids: np.ndarray) -> np.ndarray:
    """Speech ids (no silence among them) -> their audio, ``len(ids) * hop`` samples or fewer
    (a stretch shorter than the decoder takes is repeated to its length and cut back)."""
    codes = layout.speech_codes(np.asarray(ids))
    n = len(codes)
    least = min_decode_frames(decoder)
    if n < least:
        codes = np.pad(codes, (0, least - n), mode="edge")
    wave = np.asarray(decoder.decode(codes), np.float32)
    return wave[:len(wave) * n // len(codes)]


class TextPieces:
    """A text stream's tokens -> the text they complete, as they come: bytes that do not yet
    make a whole UTF-8 character wait for the next token; [EOT] ends a turn (a newline)."""

    def __init__(self, layout: TokenLayout):
        self.layout, self.tokenizer = layout, text_tokenizer(layout)
        self.silent, self.eot = layout.special("<silent_text>"), layout.special("[EOT]")
        self.pending = b""

    def add(self, ids: Sequence[int]) -> str:
        out = []
        for token in np.asarray(ids).tolist():
            if token == self.eot:
                out.append(self._flush(final=True) + "\n")
            elif token != self.silent and self.layout.is_text(token):
                self.pending += self.tokenizer.token_bytes(token)
        out.append(self._flush(final=False))
        return "".join(out)

    def _flush(self, final: bool) -> str:
        data, self.pending = self.pending, b""
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            if final or e.reason != "unexpected end of data":  # not a character cut short
                return data.decode("utf-8", errors="replace")
            self.pending = data[e.start:]
            return data[:e.start].decode("utf-8", errors="replace")


@dataclasses.dataclass(frozen=True)
class Reply:
    """What one row's conversation did in one chunk."""

    # float32, the chunk's length at the tokenizer's rate: silence or speech, the stream
    # `LiveSession.audio_delay` samples behind the chunk's ids
    audio: np.ndarray
    text: str  # the assistant text completed in this chunk ("\n" where a turn ended)
    speaking: bool  # the assistant spoke in this chunk
    user_ids: np.ndarray  # the user's speech ids the model heard
    assistant_ids: np.ndarray  # the assistant's speech ids it generated
    user_text: str = ""  # duplex_4: the model's running transcript of the user


class LiveSession:
    """``rows`` live conversations in audio on one compiled step (module docstring)."""

    def __init__(self, model: DuplexModel, rows: int = 1, *, keep_chunks: int | None = None):
        if model.speech is None:
            raise ValueError("a live session needs the model's speech tokenizer: load it with "
                             "`load_duplex` (the checkpoint stores it)")
        tokenizer: SpeechTokenizer = model.speech
        self.model, self.layout, self.tokenizer = model, model.layout, tokenizer
        self.decoder: SpeechDecoder = tokenizer  # the embedded tokenizer decodes as well
        self.session = DuplexSession(model, rows, keep_chunks=keep_chunks)
        self.rows = rows
        self.hop = samples_per_frame(tokenizer)
        self.width = self.session.width
        self.chunk_samples = self.width * self.hop
        self.context = int(round(CONTEXT_SECONDS * tokenizer.frame_rate)) * self.hop
        self.silent = self.layout.special("<silent_speech>")
        self.keys = model.chunk.keys
        self.history = [np.zeros(0, np.float32) for _ in range(rows)]
        # The k-means decoder streams across chunk edges; another decoder voices each
        # chunk's runs of speech on their own.
        self.streamer = None
        if hasattr(tokenizer, "code_magnitudes"):
            self.streamer = StreamingGriffinLim(
                tokenizer.code_magnitudes(), n_fft=tokenizer.cfg.n_fft, hop=self.hop,
                rows=rows, width=self.width)
        self.audio_delay = self.streamer.delay if self.streamer is not None else 0
        self.text = [TextPieces(self.layout) for _ in range(rows)]
        self.user_text = [TextPieces(self.layout) for _ in range(rows)]

    @property
    def chunk_seconds(self) -> float:
        return self.chunk_samples / self.tokenizer.sample_rate

    def compile(self) -> float:
        return self.session.compile()

    def start(self, rows: int | Sequence[int], seeds: int | Sequence[int] | None = None
              ) -> None:
        """New conversations on `rows` (whatever they held is dropped)."""
        self.session.start(rows, seeds)
        for row in [rows] if isinstance(rows, int) else rows:
            self.history[row] = np.zeros(0, np.float32)
            if self.streamer is not None:
                self.streamer.reset(row)
            self.text[row], self.user_text[row] = TextPieces(self.layout), TextPieces(self.layout)

    def end(self, rows: int | Sequence[int]) -> None:
        self.session.end(rows)

    def prepare(self) -> None:
        """The session's slides due before the next step, done now (`DuplexSession.prepare`)."""
        self.session.prepare()

    def step(self, audio: Mapping[int, np.ndarray]) -> dict[int, Reply]:
        """One chunk of user audio (mono float32 at the tokenizer's rate, `chunk_samples`
        long) for every active row -> each of those rows' `Reply`. Rows must be started;
        started rows left out of `audio` hear silence."""
        started = set(np.flatnonzero(self.session.started).tolist())
        if not set(audio) <= started:
            raise ValueError(f"rows {sorted(set(audio) - started)} have no conversation: "
                             "start them first")
        user = np.full((self.rows, self.width), self.silent, np.int32)
        for row, samples in audio.items():
            user[row] = self._listen(row, np.asarray(samples, np.float32))
        out = self.session.step(user)
        streams = {row: self.model.chunk.unflatten(np.concatenate([user[row], out[row]]))
                   for row in sorted(started)}
        speech = np.full((self.rows, self.width), self.silent, np.int32)
        for row, parts in streams.items():
            speech[row] = parts[Stream.ASSISTANT_SPEECH.key][0]
        audio = self._speak(speech)
        replies = {}
        for row, parts in streams.items():
            replies[row] = Reply(
                audio[row], self._text(self.text[row], parts, Stream.ASSISTANT_TEXT),
                bool(np.any(speech[row] != self.silent)), user[row], speech[row],
                self._text(self.user_text[row], parts, Stream.USER_TEXT))
        return replies

    def _listen(self, row: int, samples: np.ndarray) -> np.ndarray:
        """One chunk of audio -> its speech ids, tokenized after the row's recent audio."""
        if samples.shape != (self.chunk_samples,):
            raise ValueError(f"a step takes {self.chunk_samples} samples of audio per row "
                             f"({1000 * self.chunk_seconds:.0f} ms at "
                             f"{self.tokenizer.sample_rate} Hz), got {samples.shape}")
        if not np.isfinite(samples).all():
            raise ValueError(f"row {row}: the audio holds NaN or infinite samples")
        wave = np.concatenate([self.history[row], samples])
        self.history[row] = wave[-self.context:] if self.context else wave[:0]
        codes = self.tokenizer.encode(wave, self.tokenizer.sample_rate)
        return self.layout.speech_ids(codes[-self.width:]).astype(np.int32)

    def _speak(self, speech: np.ndarray) -> np.ndarray:
        """``[rows, width]`` speech ids -> ``[rows, chunk_samples]`` audio, `audio_delay`
        samples behind the ids."""
        spoken = speech != self.silent
        if self.streamer is not None:
            codes = self.layout.speech_codes(np.where(spoken, speech, self.layout.speech_offset))
            return self.streamer.step(codes, spoken)
        audio = np.zeros((self.rows, self.chunk_samples), np.float32)
        for row in np.flatnonzero(spoken.any(axis=1)):
            edges = np.flatnonzero(np.diff(np.concatenate([[0], spoken[row].astype(int), [0]])))
            for lo, hi in zip(edges[::2], edges[1::2]):
                wave = voice(self.decoder, self.layout, speech[row, lo:hi])
                audio[row, lo * self.hop:lo * self.hop + len(wave)] = np.clip(wave, -1.0, 1.0)
        return audio

    def _text(self, pieces: TextPieces, streams: dict, stream: Stream) -> str:
        return pieces.add(streams[stream.key][0]) if stream.key in self.keys else ""
