"""Timeline simulation: a text dialogue -> a two-channel spoken conversation.

As the method describes it (OMNIFLATTEN.md, "Data"), with every timing drawn from
`SimulationConfig` ranges:

(a) ``reply``: the user ends, and the assistant replies after a short gap;
(b) ``interrupt``: the user starts talking in the middle of an assistant turn, and the
    assistant stops within a reaction time (its speech and text are cut to the words it got
    out);
(c) ``wait``: the assistant finishes and waits in silence until the user speaks again.

The user channel carries every user turn plus noise at a random SNR over the whole channel
(the user's microphone is always open); the assistant channel carries the assistant's turns
only. Word start times come from the synthesiser.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.synth.espeak import Synthesizer, Voice
from omniflatten_jax.config import SimulationConfig
from omniflatten_jax.speech.audio import resample


@dataclasses.dataclass(frozen=True)
class SimulatedTurn:
    role: str
    text: str  # what was said (cut to the spoken words when the turn was interrupted)
    start_s: float
    end_s: float
    word_starts_s: np.ndarray  # absolute times
    word_chars: np.ndarray  # [n_words, 2]: character offset and length in `text`
    interrupted: bool = False


@dataclasses.dataclass(frozen=True)
class Conversation:
    user_audio: np.ndarray
    assistant_audio: np.ndarray
    sample_rate: int
    turns: tuple[SimulatedTurn, ...]
    boundaries: tuple[str, ...]  # one pattern per turn change: reply, interrupt or wait
    snr_db: float


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def simulate(turns: list[tuple[str, str]], user_voice: Voice, assistant_voice: Voice,
             cfg: SimulationConfig, rng: np.random.Generator, sample_rate: int) -> Conversation:
    """`turns`: (role, text) in order, roles alternating."""
    synth = Synthesizer()
    sr = sample_rate
    spoken = []
    for role, text in turns:
        utt = synth.speak(text, user_voice if role == "user" else assistant_voice)
        spoken.append((role, text, resample(utt.audio, utt.sample_rate, sr), utt.word_starts,
                       utt.word_chars))

    placed: list[tuple[SimulatedTurn, np.ndarray]] = []
    boundaries: list[str] = []
    t = _uniform(rng, cfg.lead_silence_s)
    for i, (role, text, audio, word_starts, word_chars) in enumerate(spoken):
        duration = len(audio) / sr
        turn = SimulatedTurn(role, text, t, t + duration, word_starts + t, word_chars)
        placed.append((turn, audio))
        nxt = spoken[i + 1][0] if i + 1 < len(spoken) else None
        if nxt is None:
            break
        if role == "user":
            boundaries.append("reply")
            t = turn.end_s + _uniform(rng, cfg.reply_gap_s)
        elif rng.random() < cfg.interrupt_probability and len(word_starts) > 1:
            # The user starts while the assistant speaks; the assistant stops after reacting.
            user_start = turn.start_s + duration * _uniform(rng, cfg.interrupt_at)
            cut = min(user_start + _uniform(rng, cfg.reaction_s), turn.end_s)
            placed[-1] = _cut(turn, audio, cut, sr)
            boundaries.append("interrupt")
            t = user_start
            continue
        else:
            boundaries.append("wait")
            t = turn.end_s + _uniform(rng, cfg.wait_s)
    total = max(turn.end_s for turn, _ in placed) + cfg.tail_silence_s
    n = int(np.ceil(total * sr))
    channels = {"user": np.zeros(n, np.float32), "assistant": np.zeros(n, np.float32)}
    for turn, audio in placed:
        start = int(round(turn.start_s * sr))
        channels[turn.role][start:start + len(audio)] += audio[:n - start]
    snr = _uniform(rng, cfg.snr_db)
    user = channels["user"]
    speech_power = np.mean(user[np.abs(user) > 1e-4] ** 2) if np.any(np.abs(user) > 1e-4) else 1e-4
    noise = rng.standard_normal(n).astype(np.float32) * np.sqrt(speech_power / 10 ** (snr / 10))
    return Conversation(np.clip(user + noise, -1, 1), np.clip(channels["assistant"], -1, 1), sr,
                        tuple(turn for turn, _ in placed), tuple(boundaries), snr)


def _cut(turn: SimulatedTurn, audio: np.ndarray, cut_s: float, sr: int
         ) -> tuple[SimulatedTurn, np.ndarray]:
    """The turn as far as it got by `cut_s`: audio, and the words that had started."""
    keep = int(round((cut_s - turn.start_s) * sr))
    started = turn.word_starts_s < cut_s
    n_words = max(int(started.sum()), 1)
    offset, length = turn.word_chars[n_words - 1]
    return dataclasses.replace(
        turn, text=turn.text[:offset + length], end_s=cut_s,
        word_starts_s=turn.word_starts_s[:n_words], word_chars=turn.word_chars[:n_words],
        interrupted=True), audio[:keep]
