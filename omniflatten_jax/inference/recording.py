"""A recording streamed through a duplex model as if live, and what it produced.

`stream_recording` tokenizes the user's audio, feeds it chunk by chunk to a `DuplexDecoder`
(each chunk decoded before the next is fed, as a live system would, and timed), and returns
the generated streams; `write_outputs` turns them into the files the duplex command promises:

* ``output.wav``: the assistant channel, time-synchronous with the input and of its exact
  duration (Full-Duplex-Bench's per-sample contract); silence where the assistant is silent,
  each spoken stretch decoded by the speech tokenizer's decoder;
* ``assistant_text.txt`` / ``.json``: the assistant text stream, one line per turn, stamped
  with the start of the chunk its first token was generated in (and ``user_text`` too, for
  duplex_4, where the model transcribes the user);
* ``events.json``: when the assistant took the turn and yielded it, and the decode latency
  per chunk (compilation happens before the first chunk and is reported apart);
* ``timeline.png``: both channels over time (waveforms, speech/silence, text).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from omniflatten_jax.chunking import pad_to_chunks
from omniflatten_jax.flatten import Stream
from omniflatten_jax.inference.duplex import DuplexDecoder, DuplexSettings
from omniflatten_jax.inference.engine import Sampling
from omniflatten_jax.placement import PlacedModel
from omniflatten_jax.speech.audio import load_audio, save_audio
from omniflatten_jax.speech.tokenizer import SpeechDecoder, SpeechTokenizer
from omniflatten_jax.vocab import TokenLayout


@dataclasses.dataclass(frozen=True)
class LiveResult:
    user_wave: np.ndarray  # the input, mono at `sample_rate`
    sample_rate: int
    frame_rate: float
    speech_chunk: int  # frames per chunk
    user_speech: np.ndarray  # [n_frames] speech ids fed
    streams: dict[str, np.ndarray]  # stream key -> [n_chunks, width] generated (user speech fed)
    chunk_ms: np.ndarray  # [n_chunks] wall time to decode each chunk
    compile_s: float  # compiling the decoder before the first chunk
    slides: int  # times the context slid (a prefill inside that chunk's time)

    @property
    def n_frames(self) -> int:
        return len(self.user_speech)

    def assistant_speech(self) -> np.ndarray:
        """The generated assistant speech ids per frame, cut to the input's frames."""
        return self.streams[Stream.ASSISTANT_SPEECH.key].reshape(-1)[:self.n_frames]


def stream_recording(placed: PlacedModel, layout: TokenLayout, settings: DuplexSettings,
                     tokenizer: SpeechTokenizer, audio_path: str, *,
                     sampling: Sampling = Sampling(), seed: int = 0) -> LiveResult:
    """Decodes `audio_path` (any format, rate, channel count) chunk by chunk."""
    wave = load_audio(audio_path, tokenizer.sample_rate)
    user = layout.speech_ids(tokenizer.encode(wave, tokenizer.sample_rate))
    chunk = settings.chunk
    width = chunk.streams[0][1]
    padded = pad_to_chunks(user, width, layout.special("<silent_speech>"))
    decoder = DuplexDecoder(placed, layout, chunk, settings.flatten, batch=1,
                            context_chunks=settings.context_chunks, sampling=sampling, seed=seed)
    compile_s = decoder.compile()
    streams = chunk.unflatten(decoder.run(padded[None])[0])  # one chunk at a time, timed
    return LiveResult(wave, tokenizer.sample_rate, tokenizer.frame_rate, width, user, streams,
                      np.asarray(decoder.chunk_ms), compile_s, decoder.slides)


def speech_runs(speech: np.ndarray, silent_id: int) -> list[tuple[int, int]]:
    """``[start, end)`` frame ranges where `speech` is not <silent_speech>."""
    active = np.concatenate([[False], speech != silent_id, [False]])
    edges = np.flatnonzero(np.diff(active.astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def assistant_audio(result: LiveResult, layout: TokenLayout, decoder: SpeechDecoder
                    ) -> np.ndarray:
    """Samples for exactly the input's duration: zeros, and each spoken run decoded in place."""
    hop = result.sample_rate / result.frame_rate
    out = np.zeros(len(result.user_wave), np.float32)
    speech = result.assistant_speech()
    for start, end in speech_runs(speech, layout.special("<silent_speech>")):
        wave = decoder.decode(layout.speech_codes(speech[start:end]))
        lo = int(round(start * hop))
        wave = wave[:max(len(out) - lo, 0)]
        out[lo:lo + len(wave)] = wave
    return out


def text_turns(result: LiveResult, layout: TokenLayout, stream: Stream) -> list[dict]:
    """The text stream cut into turns at [EOT]: text, and the time of the chunk where each
    turn's first and last tokens were generated."""
    silent, eot = layout.special("<silent_text>"), layout.special("[EOT]")
    chunk_s = result.speech_chunk / result.frame_rate
    tokenizer = layout.tokenizer()
    turns, ids, first = [], [], None

    def close(last_chunk):
        if ids:
            turns.append({"start_s": round(first * chunk_s, 3),
                          "end_s": round((last_chunk + 1) * chunk_s, 3),
                          "text": tokenizer.decode([i for i in ids if layout.is_text(i)])})

    for c, row in enumerate(result.streams[stream.key]):
        for token in row.tolist():
            if token == eot:
                close(c)
                ids, first = [], None
            elif token != silent:
                first = c if first is None else first
                ids.append(token)
    close(len(result.streams[stream.key]) - 1)
    return turns


def speaking_events(result: LiveResult, layout: TokenLayout) -> list[dict]:
    """Took the turn / yielded: the edges of the generated assistant speech."""
    found = []
    for start, end in speech_runs(result.assistant_speech(), layout.special("<silent_speech>")):
        found.append({"event": "took_turn", "time_s": round(start / result.frame_rate, 3)})
        found.append({"event": "yielded", "time_s": round(end / result.frame_rate, 3)})
    return found


def write_outputs(result: LiveResult, layout: TokenLayout, decoder: SpeechDecoder, out_dir: str,
                  title: str = "") -> dict:
    """Writes the command's files into `out_dir`; returns the summary it prints."""
    from omniflatten_jax.inference.timeline import plot_timeline

    os.makedirs(out_dir, exist_ok=True)
    audio = assistant_audio(result, layout, decoder)
    save_audio(os.path.join(out_dir, "output.wav"), audio, result.sample_rate)
    texts = {s.key: text_turns(result, layout, s) for s in (Stream.ASSISTANT_TEXT,
                                                            Stream.USER_TEXT)
             if s.key in result.streams}
    for key, turns in texts.items():
        with open(os.path.join(out_dir, f"{key}.json"), "w") as f:
            json.dump(turns, f, indent=2, ensure_ascii=False)
        with open(os.path.join(out_dir, f"{key}.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"[{t['start_s']:7.2f} s] {t['text']}\n" for t in turns)
    chunk_audio_ms = 1000 * result.speech_chunk / result.frame_rate
    ms = result.chunk_ms
    summary = {
        "input_seconds": round(len(result.user_wave) / result.sample_rate, 3),
        "output_seconds": round(len(audio) / result.sample_rate, 3),
        "chunks": len(ms), "chunk_audio_ms": chunk_audio_ms, "context_slides": result.slides,
        "compile_seconds": round(result.compile_s, 2),
        "latency_ms": {"mean": round(float(ms.mean()), 2),
                       "p95": round(float(np.percentile(ms, 95)), 2),
                       "max": round(float(ms.max()), 2)},
        "real_time_factor": round(float(ms.mean() / chunk_audio_ms), 4),
    }
    with open(os.path.join(out_dir, "events.json"), "w") as f:
        json.dump({"events": speaking_events(result, layout), **summary}, f, indent=2)
    plot_timeline(result, layout, audio, texts, os.path.join(out_dir, "timeline.png"), title)
    return summary
