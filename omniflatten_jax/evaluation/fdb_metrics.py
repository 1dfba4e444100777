"""Full-Duplex-Bench v1's offline metrics, implemented from their definitions.

FDB (Lin et al., arXiv 2503.04721) scores a model from its time-synchronous ``output.wav``: the
words an ASR finds in it (with start and end times) and, for backchannels, its voice-activity
segments. The definitions followed here were read from FDB v1's README and evaluation
scripts and written down below; FDB's own code is CC BY-NC and is not used.

* The "takes the turn" rule (TOR), shared by pause handling, smooth turn-taking and user
  interruption: no words -> 0; else with D = end(last word) - start(first word) (the last
  word's start when it has no end), D < 1 s and at most 3 words -> 0 (a backchannel or noise);
  else 1.
* Latency (turn-taking, interruption): start(first word) - the reference time, clipped at 0,
  averaged over the samples with TOR = 1.
* Backchannel: voice-activity segments in time order; a segment longer than 3 s -> TOR 1 and
  stop; else the words overlapping it: more than 3 -> TOR 1; under 1 s with at most 2 words ->
  TOR 0; else TOR 1. Every segment under 1 s visited is listed as a backchannel, whatever its
  TOR (FDB's wording). The sample's TOR is the last one set. Frequency = backchannels per
  second of output; JSD = the Jensen-Shannon distance (natural log) between the backchannels'
  0.2 s-bin histogram and the ground-truth distribution resampled onto the same bins; no
  backchannel scores 1.

The LLM-judged scores (interruption relevance, v1.5 behaviour labels) need a hosted model and
are out of scope offline.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

BACKCHANNEL_MAX_S = 1.0  # a turn needs D >= 1 s ...
BACKCHANNEL_MAX_WORDS = 3  # ... or more than 3 words
SEGMENT_TURN_S = 3.0  # a voice segment this long is a turn whatever its words
SEGMENT_BACKCHANNEL_WORDS = 2
JSD_BIN_S = 0.2
JSD_FLOOR = 1e-10


@dataclasses.dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float | None = None  # some recognisers give no end for a word


def takes_turn(words: Sequence[Word]) -> int:
    """FDB's TOR of one output: 1 if its words are a turn, 0 if silence or a backchannel."""
    if not words:
        return 0
    last = words[-1]
    duration = (last.end if last.end is not None else last.start) - words[0].start
    if duration < BACKCHANNEL_MAX_S and len(words) <= BACKCHANNEL_MAX_WORDS:
        return 0
    return 1


def latency(words: Sequence[Word], reference_s: float) -> float:
    """Seconds from `reference_s` (the user's turn end, the interruption's end) to the first
    word, clipped at 0 (a model that speaks early is not negatively late)."""
    return max(0.0, words[0].start - reference_s)


def words_after(words: Sequence[Word], cut_s: float) -> list[Word]:
    """The words of an output after `cut_s` (interruption: what follows the user's
    interrupting speech), in the output's own time. FDB recognises the output cropped at the
    cut and adds the cut back to every time, so its ``output.json`` words all start at or
    after it; `fdb_score` crops before PocketSphinx the same way."""
    return [w for w in words if w.start >= cut_s]


@dataclasses.dataclass(frozen=True)
class TurnScore:
    tor: int
    latency_s: float | None  # None when TOR is 0


def turn_score(words: Sequence[Word], reference_s: float) -> TurnScore:
    tor = takes_turn(words)
    return TurnScore(tor, latency(words, reference_s) if tor else None)


def mean_tor_and_latency(scores: Sequence[TurnScore]) -> dict:
    """Mean TOR over samples; mean latency over the samples that took the turn."""
    taken = [s.latency_s for s in scores if s.tor and s.latency_s is not None]
    return {"tor": float(np.mean([s.tor for s in scores])) if scores else math.nan,
            "latency_s": float(np.mean(taken)) if taken else math.nan,
            "samples": len(scores)}


@dataclasses.dataclass(frozen=True)
class BackchannelScore:
    tor: int
    backchannels: tuple[tuple[float, float], ...]  # (start, end) seconds
    duration_s: float

    @property
    def frequency(self) -> float:
        return len(self.backchannels) / self.duration_s if self.duration_s > 0 else 0.0


def _overlapping(words: Sequence[Word], start: float, end: float) -> int:
    return sum(1 for w in words
               if w.start < end and (w.end if w.end is not None else w.start) > start)


def backchannel_score(segments: Sequence[tuple[float, float]], words: Sequence[Word],
                      duration_s: float) -> BackchannelScore:
    """The backchannel task's TOR and backchannel list of one output (module docstring)."""
    tor, found = 0, []
    for start, end in sorted(segments):
        length = end - start
        if length > SEGMENT_TURN_S:
            tor = 1
            break
        n = _overlapping(words, start, end)
        if n > BACKCHANNEL_MAX_WORDS:
            tor = 1
        elif length < BACKCHANNEL_MAX_S and n <= SEGMENT_BACKCHANNEL_WORDS:
            tor = 0
        else:
            tor = 1
        if length < BACKCHANNEL_MAX_S:  # a short segment is listed whatever its TOR
            found.append((start, end))
    return BackchannelScore(tor, tuple(found), duration_s)


def backchannel_histogram(backchannels: Sequence[tuple[float, float]],
                          duration_s: float) -> np.ndarray:
    """Counts per 0.2 s bin over the output: each backchannel adds 1 to every bin it touches."""
    bins = max(1, int(math.ceil(duration_s / JSD_BIN_S)))
    hist = np.zeros(bins)
    for start, end in backchannels:
        first, last = int(start / JSD_BIN_S), int(end / JSD_BIN_S)
        hist[min(first, bins - 1):min(last, bins - 1) + 1] += 1
    return hist


def jensen_shannon_distance(p: np.ndarray, q: np.ndarray) -> float:
    """sqrt(JS divergence), natural log: 0 for equal distributions, at most sqrt(ln 2)."""
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    divergence = 0.5 * (np.sum(p * np.log(p / m)) + np.sum(q * np.log(q / m)))
    return float(math.sqrt(max(divergence, 0.0)))


def backchannel_jsd(backchannels: Sequence[tuple[float, float]], duration_s: float,
                    reference: np.ndarray) -> float:
    """Distance between where the model backchannels and where listeners would (`reference`,
    any number of bins over the same duration, resampled linearly onto 0.2 s bins); 1 when
    the model never backchannels."""
    if not backchannels:
        return 1.0
    ours = backchannel_histogram(backchannels, duration_s) + JSD_FLOOR
    reference = np.asarray(reference, np.float64)
    theirs = np.interp(np.linspace(0, 1, len(ours)), np.linspace(0, 1, len(reference)),
                       reference) + JSD_FLOOR
    return jensen_shannon_distance(ours, theirs)


def summarize_backchannels(scores: Sequence[BackchannelScore], jsds: Sequence[float]) -> dict:
    return {"tor": float(np.mean([s.tor for s in scores])) if scores else math.nan,
            "frequency": float(np.mean([s.frequency for s in scores])) if scores else math.nan,
            "jsd": float(np.mean(jsds)) if jsds else math.nan, "samples": len(scores)}
