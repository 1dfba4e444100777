"""Word and character error rates, on normalised text.

Reference and hypothesis are both normalised (`transcripts.normalize_transcript`). CER
counts characters of the normalised text, spaces included; WER counts words. Both are corpus
rates: total edits / total reference length (an empty hypothesis scores 1.0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from omniflatten_jax.tokens.transcripts import normalize_transcript


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    if not ref:
        return len(hyp)
    row = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, 1):
        prev, row = row, np.empty_like(row)
        row[0] = i
        cost = np.array([r != h for h in hyp], dtype=row.dtype)
        # Substitution/match and deletion in vector form; insertion needs a running minimum.
        row[1:] = np.minimum(prev[:-1] + cost, prev[1:] + 1)
        for j in range(1, len(row)):
            row[j] = min(row[j], row[j - 1] + 1)
    return int(row[-1])


def error_rate(refs: Sequence[str], hyps: Sequence[str], unit: str) -> float:
    """Corpus WER (`unit="word"`) or CER (`unit="char"`) over normalised texts."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    split = (lambda s: s.split()) if unit == "word" else list
    edits = total = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        r, h = split(normalize_transcript(ref)), split(normalize_transcript(hyp))
        edits += edit_distance(r, h)
        total += len(r)
    return edits / max(total, 1)


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    return error_rate(refs, hyps, "word")


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    return error_rate(refs, hyps, "char")
