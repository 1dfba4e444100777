"""Evaluation of the alignment stage on held-out utterances: ASR and TTS, beside baselines.

* ASR: greedy transcription of ``[ASR][SOS] speech [EOS][SOT]`` (only text ids and [EOT] are
  legal); corpus WER and CER (`text_metrics`).
* TTS: greedy speech codes after ``[TTS][SOT] text [EOT][SOS]`` (only speech ids and [EOS]);
  code accuracy = matching codes at the same frame / reference frames (missing frames count
  as wrong, extra frames are ignored), and the CER of the generated codes transcribed by this
  same model's ASR (labelled "by own ASR": a circular but useful check that the speech says
  the text).
* Baselines: an empty transcript; the most frequent training transcript; for TTS the most
  frequent training speech code at every frame.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np

from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.evaluation.text_metrics import cer, wer
from omniflatten_jax.inference.generate import greedy_generate
from omniflatten_jax.model.placement import PlacedModel
from omniflatten_jax.tokens.text_tokenizers import text_tokenizer


def _ids(layout: TokenLayout, *names: str) -> list[int]:
    return [layout.special(n) for n in names]


def transcribe(placed: PlacedModel, layout: TokenLayout,
               speech: Sequence[np.ndarray], max_new: int, batch_size: int) -> list[str]:
    prompts = [np.concatenate([_ids(layout, "[ASR]", "[SOS]"), s, _ids(layout, "[EOS]", "[SOT]")])
               for s in speech]
    out = greedy_generate(placed, prompts, legal=layout.id_mask(text=True),
                          stop_ids=_ids(layout, "[EOT]"), max_new=max_new,
                          pad_id=layout.special("<pad>"), batch_size=batch_size)
    tok = text_tokenizer(layout)
    return [tok.decode(ids) for ids in out]


def synthesize(placed: PlacedModel, layout: TokenLayout,
               texts: Sequence[np.ndarray], max_new: int, batch_size: int) -> list[np.ndarray]:
    prompts = [np.concatenate([_ids(layout, "[TTS]", "[SOT]"), t, _ids(layout, "[EOT]", "[SOS]")])
               for t in texts]
    return greedy_generate(placed, prompts, legal=layout.id_mask(speech=True),
                           stop_ids=_ids(layout, "[EOS]"), max_new=max_new,
                           pad_id=layout.special("<pad>"), batch_size=batch_size)


def code_accuracy(refs: Sequence[np.ndarray], hyps: Sequence[np.ndarray]) -> float:
    hits = total = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        n = min(len(ref), len(hyp))
        hits += int(np.sum(ref[:n] == hyp[:n]))
        total += len(ref)
    return hits / max(total, 1)


def evaluate_alignment(placed: PlacedModel, layout: TokenLayout,
                       test: Sequence[dict], train_texts: Sequence[str],
                       train_codes: np.ndarray, *, max_examples: int, tts_max_examples: int,
                       batch_size: int) -> dict:
    """`test` records hold text, text_ids, speech_ids and tts_speech_ids (as the dataset)."""
    test = list(test)[:max_examples]
    if not test:
        raise ValueError("the test split is empty: nothing to evaluate")
    refs = [r["text"] for r in test]
    max_text = max(len(r["text_ids"]) for r in test) + 8
    hyps = transcribe(placed, layout, [r["speech_ids"] for r in test], max_text,
                      batch_size)
    frequent = collections.Counter(train_texts).most_common(1)[0][0] if train_texts else ""

    tts = test[:tts_max_examples]
    tts_refs = [r["tts_speech_ids"] for r in tts]
    max_speech = int(max(len(s) for s in tts_refs) * 1.5) + 8
    generated = synthesize(placed, layout, [r["text_ids"] for r in tts], max_speech,
                           batch_size)
    heard = transcribe(placed, layout, generated, max_text, batch_size)
    common_code = int(np.bincount(train_codes).argmax()) if len(train_codes) else -1
    return {
        "asr": {"n": len(test), "cer": cer(refs, hyps), "wer": wer(refs, hyps)},
        "tts": {"n": len(tts), "code_accuracy": code_accuracy(tts_refs, generated),
                "cer_by_own_asr": cer([r["text"] for r in tts], heard),
                "length_ratio": float(np.mean([len(g) / max(len(r), 1)
                                               for g, r in zip(generated, tts_refs)]))},
        "baselines": {
            "asr_empty": {"cer": cer(refs, [""] * len(refs)), "wer": wer(refs, [""] * len(refs))},
            "asr_most_frequent_transcript": {"text": frequent, "cer": cer(refs, [frequent] *
                                                                          len(refs)),
                                             "wer": wer(refs, [frequent] * len(refs))},
            "tts_most_frequent_code": {"code_accuracy": code_accuracy(
                tts_refs, [np.full(len(r), common_code) for r in tts_refs])},
        },
        "examples": [{"reference": r, "asr": h} for r, h in zip(refs[:8], hyps[:8])],
    }


def format_table(result: dict) -> str:
    b = result["baselines"]
    rows = [
        ("ASR CER", result["asr"]["cer"], b["asr_empty"]["cer"],
         b["asr_most_frequent_transcript"]["cer"]),
        ("ASR WER", result["asr"]["wer"], b["asr_empty"]["wer"],
         b["asr_most_frequent_transcript"]["wer"]),
        ("TTS code accuracy", result["tts"]["code_accuracy"], None,
         b["tts_most_frequent_code"]["code_accuracy"]),
        ("TTS CER (by own ASR)", result["tts"]["cer_by_own_asr"], None, None),
    ]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"{'metric':<22}{'model':>8}{'empty':>8}{'most frequent':>15}"]
    lines += [f"{name:<22}{fmt(m):>8}{fmt(e):>8}{fmt(f):>15}" for name, m, e, f in rows]
    lines.append(f"(ASR on {result['asr']['n']} held-out utterances, TTS on "
                 f"{result['tts']['n']})")
    return "\n".join(lines)
