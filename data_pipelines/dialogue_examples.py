"""Dialogue records -> training examples of each dialogue stage, laid out by `tokens`.

Long dialogues become several examples, never truncated ones:

* duplex stages: the dense per-chunk streams are cut at chunk boundaries into windows of
  `StagePlan.context_chunks` chunks at most; every chunk lands in exactly one window.
* half_duplex: consecutive turns are grouped greedily into sequences of at most ``seq_len``
  tokens; a single turn longer than that cannot be split and is reported at build time.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from data_pipelines.records import dialogue_streams
from omniflatten_jax.config import FlattenConfig
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.stage_plan import StagePlan
from omniflatten_jax.tokens.dialogue_chunks import dialogue_chunks
from omniflatten_jax.tokens.sequence import FlatSequence, SpokenTurn, half_duplex_sequence


def _example(seq: FlatSequence) -> dict:
    return {"tokens": seq.tokens, "streams": seq.streams, "loss_mask": seq.loss_mask}


def duplex_windows(record, layout: TokenLayout, plan: StagePlan,
                   per_window: int | None = None) -> list[FlatSequence]:
    """A duplex stage's windows of `plan.context_chunks` chunks (or `per_window`)."""
    chunk, cfg = plan.chunk, plan.flatten
    per_window = per_window or plan.context_chunks
    chunks = dialogue_chunks(dialogue_streams(record), layout, cfg)
    n_chunks = len(chunks["user_speech"])
    windows = []
    for lo in range(0, n_chunks, per_window):
        part = {k: chunks[k][lo:lo + per_window] for k in chunk.keys}
        n = len(part["user_speech"])
        windows.append(FlatSequence(chunk.flatten(part), chunk.stream_ids(n), chunk.loss_mask(n)))
    return windows


def spoken_turns(record) -> list[SpokenTurn]:
    dialogue = dialogue_streams(record)
    return [SpokenTurn(t.role, t.text_ids, (dialogue.user_speech if t.role == "user"
                                            else dialogue.assistant_speech)[t.start:t.end])
            for t in dialogue.turns]


def half_duplex_groups(record, layout: TokenLayout, cfg: FlattenConfig,
                       seq_len: int) -> list[FlatSequence]:
    groups: list[FlatSequence] = []
    current: list[SpokenTurn] = []
    for turn in spoken_turns(record):
        candidate = half_duplex_sequence(layout, current + [turn], cfg)
        if len(candidate) <= seq_len:
            current.append(turn)
            continue
        if current:
            groups.append(half_duplex_sequence(layout, current, cfg))
        if len(half_duplex_sequence(layout, [turn], cfg)) > seq_len:
            raise ValueError(f"a {turn.role} turn of {len(turn.speech_ids)} frames does not fit "
                             f"into seq_len={seq_len}")
        current = [turn]
    if current:
        groups.append(half_duplex_sequence(layout, current, cfg))
    return groups


def stage_examples(record, layout: TokenLayout, plan: StagePlan) -> list[FlatSequence]:
    if plan.chunk is None:
        return half_duplex_groups(record, layout, plan.flatten, plan.train.seq_len)
    return duplex_windows(record, layout, plan)


def assistant_text_lag(record, layout: TokenLayout, cfg: FlattenConfig) -> int:
    """Chunks by which the latest assistant turn's text ends after its speech (<= 0 is good).

    Needs `text_end_marker` (the [EOT] of each turn marks where its text ends)."""
    if not cfg.text_end_marker:
        return 0
    dialogue = dialogue_streams(record)
    text = dialogue_chunks(dialogue, layout, cfg)["assistant_text"]
    eot_chunks = np.flatnonzero(text.reshape(-1) == layout.special("[EOT]")) // cfg.text_chunk
    ends = [(t.end - 1) // cfg.speech_chunk for t in dialogue.turns if t.role == "assistant"]
    return max((int(e - s) for e, s in zip(eot_chunks, ends, strict=True)), default=0)


@dataclasses.dataclass(frozen=True)
class StageExamples(grain.experimental.FlatMapTransform):
    """A dialogue record -> its examples for `plan` (see the module docstring)."""

    layout: TokenLayout
    plan: StagePlan
    max_fan_out: int = 256

    def flat_map(self, record):
        return [_example(s) for s in stage_examples(record, self.layout, self.plan)]
