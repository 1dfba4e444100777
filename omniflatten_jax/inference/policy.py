"""A stage's `DecodingPolicy` applied: the engine's rows, and the commands' override flags.

A duplex stage chooses its policy on its validation split and stores it in its checkpoints
(`CheckpointMeta.decoding`); the duplex command, the FDB harness, the turn-taking evaluation
and the latency benchmark decode with it. The commands' flags change single fields of it
(``--decoding onset_threshold=0.3``; ``--temperature``, ``--top_k`` and ``--seed`` are
shorthands for both streams), and say which fields they changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from omniflatten_jax.config import DecodingPolicy, override
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.inference.engine import RowPolicy, Sampling, row_policy
from omniflatten_jax.tokens.chunk_layout import ChunkLayout
from omniflatten_jax.tokens.sequence import Stream

SILENCE = {Stream.USER_TEXT: "<silent_text>", Stream.ASSISTANT_TEXT: "<silent_text>",
           Stream.USER_SPEECH: "<silent_speech>", Stream.ASSISTANT_SPEECH: "<silent_speech>"}
SPEECH_STREAMS = (Stream.USER_SPEECH, Stream.ASSISTANT_SPEECH)


def policy_rows(layout: TokenLayout, chunk: ChunkLayout, policy: DecodingPolicy) -> RowPolicy:
    """The engine's per-row policy for a chunk's generated streams (`duplex.chunk_masks`
    rows): each stream's sampling (the text or the speech settings) and, under the threshold
    rule, its silence id."""
    generated = [stream for stream, _ in chunk.streams[1:]]
    text = Sampling(policy.text_temperature, policy.text_top_k)
    speech = Sampling(policy.speech_temperature, policy.speech_top_k)
    samplings = [speech if stream in SPEECH_STREAMS else text for stream in generated]
    silent = ([layout.special(SILENCE[stream]) for stream in generated]
              if policy.speak_rule == "threshold" else None)
    return row_policy(samplings, silent, onset=policy.onset_threshold,
                      stop=policy.stop_threshold, memory=policy.onset_memory)


def override_policy(stored: DecodingPolicy, assignments: Sequence[str] = (), *,
                    temperature: float | None = None, top_k: int | None = None,
                    seed: int | None = None) -> DecodingPolicy:
    """`stored` with ``FIELD=VALUE`` `assignments` applied, then the shorthands (both
    streams' temperature or top-k, the seed) where given; a bad field or value is an error
    that names it."""
    policy = stored
    for assignment in assignments:
        policy = override(policy, assignment)
    shorthands = {"temperature": (temperature, ("text_temperature", "speech_temperature")),
                  "top_k": (top_k, ("text_top_k", "speech_top_k")), "seed": (seed, ("seed",))}
    for value, fields in shorthands.values():
        if value is not None:
            policy = dataclasses.replace(policy, **{f: value for f in fields})
    return policy
