"""Half-duplex replies generated turn by turn, through the same engine as every decoder.

For each held-out assistant turn, the model hears the dialogue so far (the half-duplex
sequence of the turns before it) and generates its reply as the stage trained it to: first
``<assistant> [SOT] text [EOT]``, then, given that text, ``[SOS] speech [EOS]``.

* Reply CER: character error rate of the generated reply text against the recorded reply
  (normalised like transcripts), beside the empty-reply baseline (CER 1.0). Chatterbot answers
  are fixed strings, so a model that learnt the corpus reproduces many of them.
* Speech: the share of replies whose speech ended with [EOS] within the budget, and the mean
  ratio of generated to recorded speech frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from omniflatten_jax.config import FlattenConfig
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.evaluation.text_metrics import cer
from omniflatten_jax.inference.generate import greedy_generate
from omniflatten_jax.model.placement import PlacedModel
from omniflatten_jax.tokens.sequence import SpokenTurn, half_duplex_sequence
from omniflatten_jax.tokens.text_tokenizers import text_tokenizer
from omniflatten_jax.tokens.transcripts import normalize_transcript


def reply_prompts(dialogues: Sequence[Sequence[SpokenTurn]], layout: TokenLayout,
                  cfg: FlattenConfig, max_prompt: int) -> list[tuple[np.ndarray, SpokenTurn]]:
    """(context up to ``<assistant> [SOT]``, the recorded reply) per assistant turn whose
    context fits in `max_prompt` tokens."""
    found = []
    opening = np.asarray([layout.special("<assistant>"), layout.special("[SOT]")], np.int32)
    for turns in dialogues:
        for i, turn in enumerate(turns):
            if turn.role != "assistant" or i == 0:
                continue
            context = half_duplex_sequence(layout, turns[:i], cfg).tokens
            prompt = np.concatenate([context, opening])
            if len(prompt) <= max_prompt:
                found.append((prompt, turn))
    return found


def evaluate_replies(placed: PlacedModel, layout: TokenLayout, cfg: FlattenConfig,
                     dialogues: Sequence[Sequence[SpokenTurn]], *, max_prompt: int,
                     max_examples: int, batch_size: int) -> dict:
    cases = reply_prompts(dialogues, layout, cfg, max_prompt)[:max_examples]
    if not cases:
        raise ValueError("no held-out assistant turn fits the prompt budget")
    pad = layout.special("<pad>")
    max_text = max(len(t.text_ids) for _, t in cases) * 2 + 8
    texts = greedy_generate(placed, [p for p, _ in cases], legal=layout.id_mask(text=True),
                            stop_ids=[layout.special("[EOT]")], max_new=max_text, pad_id=pad,
                            batch_size=batch_size)
    speech_prompts = [np.concatenate([p, t, [layout.special("[EOT]"), layout.special("[SOS]")]])
                      for (p, _), t in zip(cases, texts)]
    max_speech = max(len(t.speech_ids) for _, t in cases) * 2
    speech = greedy_generate(placed, speech_prompts, legal=layout.id_mask(speech=True),
                             stop_ids=[layout.special("[EOS]")], max_new=max_speech, pad_id=pad,
                             batch_size=batch_size)
    tok = text_tokenizer(layout)
    refs = [normalize_transcript(tok.decode(t.text_ids)) for _, t in cases]
    hyps = [normalize_transcript(tok.decode(ids)) for ids in texts]
    return {
        "replies": len(cases),
        "reply_cer": cer(refs, hyps), "empty_reply_cer": cer(refs, [""] * len(refs)),
        "exact_replies": sum(r == h for r, h in zip(refs, hyps)) / len(cases),
        "speech_ended": sum(len(s) < max_speech for s in speech) / len(cases),
        "speech_length_ratio": float(np.mean([len(s) / max(len(t.speech_ids), 1)
                                              for s, (_, t) in zip(speech, cases)])),
        "examples": [{"reference": r, "generated": h} for r, h in zip(refs[:5], hyps[:5])],
    }
