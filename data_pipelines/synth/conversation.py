"""Timeline simulation: a text dialogue -> a two-channel spoken conversation.

As the method describes it (OmniFlatten, arXiv 2410.17799, "Data"), with every timing drawn from
`SimulationConfig` ranges:

(a) ``reply``: the user ends, and the assistant replies after a short gap;
(b) ``interrupt``: the user starts talking in the middle of an assistant turn, and the
    assistant stops within a reaction time (its speech and text are cut to the words it got
    out);
(c) ``wait``: the assistant finishes and waits in silence until the user speaks again.

And the behaviours Full-Duplex-Bench tests beyond these (events inside turns, not turn
changes, `Conversation.events`):

(d) ``pause``: the user stops between two words of a turn and goes on; the assistant stays
    silent (the turn's audio gets the pause inserted at a word start);
(e) ``user_backchannel``: the user says "mm-hm" (or similar) while the assistant speaks, and
    the assistant keeps talking (user audio only: it is not a turn and has no text stream);
(f) ``assistant_backchannel`` (off by default): the assistant says "mm-hm" during a long user
    turn (assistant audio only, no text).

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
class SimulatedEvent:
    kind: str  # one of `records.EVENT_KINDS`
    start_s: float
    end_s: float
    text: str = ""  # what a backchannel says


@dataclasses.dataclass(frozen=True)
class Conversation:
    user_audio: np.ndarray
    assistant_audio: np.ndarray
    sample_rate: int
    turns: tuple[SimulatedTurn, ...]
    boundaries: tuple[str, ...]  # one pattern per turn change: reply, interrupt or wait
    snr_db: float
    events: tuple[SimulatedEvent, ...] = ()  # in time order


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _chance(rng: np.random.Generator, probability: float) -> bool:
    """A draw only for a behaviour that is on: with it off, the rest of the simulation draws
    the same numbers as before it existed."""
    return probability > 0 and rng.random() < probability


def _with_pause(audio: np.ndarray, word_starts: np.ndarray, cfg: SimulationConfig,
                rng: np.random.Generator, sr: int
                ) -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None]:
    """The utterance with a silence inserted at the start of one of its middle words (time
    relative to the utterance), or unchanged."""
    n = len(word_starts)
    if n < cfg.pause_min_words or not _chance(rng, cfg.pause_probability):
        return audio, word_starts, None
    word = int(np.clip(round(n * _uniform(rng, cfg.pause_at)), 1, n - 1))
    at = float(word_starts[word])
    length = _uniform(rng, cfg.pause_s)
    cut = int(round(at * sr))
    audio = np.concatenate([audio[:cut], np.zeros(int(round(length * sr)), audio.dtype),
                            audio[cut:]])
    shifted = word_starts + np.where(np.arange(n) >= word, length, 0.0)
    return audio, shifted.astype(word_starts.dtype), (at, at + length)


def simulate(turns: list[tuple[str, str]], user_voice: Voice, assistant_voice: Voice,
             cfg: SimulationConfig, rng: np.random.Generator, sample_rate: int) -> Conversation:
    """`turns`: (role, text) in order, roles alternating."""
    synth = Synthesizer()
    sr = sample_rate
    spoken, pauses = [], []
    for role, text in turns:
        utt = synth.speak(text, user_voice if role == "user" else assistant_voice)
        audio, word_starts, pause = resample(utt.audio, utt.sample_rate, sr), utt.word_starts, None
        if role == "user":
            audio, word_starts, pause = _with_pause(audio, word_starts, cfg, rng, sr)
        spoken.append((role, text, audio, word_starts, utt.word_chars))
        pauses.append(pause)

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
    assistant_turns = [(t.start_s, t.end_s) for t, _ in placed if t.role == "assistant"]
    # A pause is an event only where the assistant is silent throughout: one early in a turn
    # that interrupted the assistant, before it stopped, tests nothing (its silence stays).
    events = [SimulatedEvent("pause", turn.start_s + p[0], turn.start_s + p[1])
              for (turn, _), p in zip(placed, pauses) if p is not None
              and not _overlaps(turn.start_s + p[0], turn.start_s + p[1], assistant_turns)]
    extra = _backchannels(placed, [(e.start_s, e.end_s) for e in events], synth, user_voice,
                          assistant_voice, cfg, rng, sr)
    events += [event for event, _, _ in extra]
    total = max(turn.end_s for turn, _ in placed) + cfg.tail_silence_s
    n = int(np.ceil(total * sr))
    channels = {"user": np.zeros(n, np.float32), "assistant": np.zeros(n, np.float32)}
    for role, start_s, audio in ([(t.role, t.start_s, a) for t, a in placed]
                                 + [(role, e.start_s, a) for e, role, a in extra]):
        start = int(round(start_s * sr))
        channels[role][start:start + len(audio)] += audio[:n - start]
    snr = _uniform(rng, cfg.snr_db)
    user = channels["user"]
    speech_power = np.mean(user[np.abs(user) > 1e-4] ** 2) if np.any(np.abs(user) > 1e-4) else 1e-4
    noise = rng.standard_normal(n).astype(np.float32) * np.sqrt(speech_power / 10 ** (snr / 10))
    return Conversation(np.clip(user + noise, -1, 1), np.clip(channels["assistant"], -1, 1), sr,
                        tuple(turn for turn, _ in placed), tuple(boundaries), snr,
                        tuple(sorted(events, key=lambda e: e.start_s)))


def _backchannels(placed, pauses: list[tuple[float, float]], synth: Synthesizer,
                  user_voice: Voice, assistant_voice: Voice, cfg: SimulationConfig,
                  rng: np.random.Generator, sr: int
                  ) -> list[tuple[SimulatedEvent, str, np.ndarray]]:
    """(event, channel, audio) of each backchannel: the user's inside assistant turns (ending
    `backchannel_margin_s` before the assistant stops or the user's next turn starts), the
    assistant's inside user turns (as long before the user's turn ends, and clear of the
    turn's pause, which must stay silent)."""
    found = []
    for i, (turn, _) in enumerate(placed):
        later = [t.start_s for t, _ in placed[i + 1:] if t.role != turn.role]
        limit = min([turn.end_s, *later[:1]])
        speaks, probability, voice, at = (
            ("user", cfg.user_backchannel_probability, user_voice, cfg.user_backchannel_at)
            if turn.role == "assistant" else
            ("assistant", cfg.assistant_backchannel_probability, assistant_voice,
             cfg.assistant_backchannel_at))
        if turn.end_s - turn.start_s < cfg.backchannel_min_s or not _chance(rng, probability):
            continue
        text = str(rng.choice(cfg.backchannels))
        utt = synth.speak(text, voice)
        audio = resample(utt.audio, utt.sample_rate, sr)
        start = turn.start_s + (turn.end_s - turn.start_s) * _uniform(rng, at)
        end = start + len(audio) / sr
        if (end + cfg.backchannel_margin_s <= limit
                and not (speaks == "assistant" and _overlaps(start, end, pauses))):
            kind = f"{speaks}_backchannel"
            found.append((SimulatedEvent(kind, start, end, text), speaks, audio))
    return found


def _overlaps(start_s: float, end_s: float, spans: list[tuple[float, float]]) -> bool:
    return any(lo < end_s and start_s < hi for lo, hi in spans)


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
