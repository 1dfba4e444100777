"""What a duplex model believes about taking the turn: P(speak) frame by frame, teacher-forced.

Live decoding shows what a model does under one policy; this shows what it learnt, under any.
Each held-out dialogue is laid out as the stage trains on it (windows of its training
context, the recorded assistant's streams fed as recorded) and one forward pass gives, at
every assistant speech position, P(speak) = 1 - P(<silent_speech>) over the legal speech ids,
and where the stage has assistant text (which leads its speech inside a chunk, so the speech
positions of a turn's first chunk already see its text), P(start) = 1 - P(<silent_text>) at
each chunk's first assistant text position: where such a stage decides to take the turn.
Around each simulated event the traces say whether the model separates the cases a duplex
model must tell apart:

* ``reply``: a user turn the assistant answers (0 s = the user's last frame);
* ``pause``: the user stops mid-turn and goes on (0 s = the pause's first frame);
* ``user_backchannel``: "mm-hm" while the assistant speaks (0 s = its first frame);
* ``interruption``: the user cuts into the assistant (0 s = the user's first frame).

`onset_curves` reduces that to the question every policy faces: while the assistant is still
silent, how likely is the model to start, by how long the user has been silent, after a turn
end and inside a pause? `onset_auc` is the one number for a lever table: the chance that a
silent frame after a turn end gets a higher P(speak) than a silent frame inside a pause, at
the same elapsed silence bin (0.5: no separation; 1: perfect).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.model.placement import PlacedModel
from omniflatten_jax.tokens.batches import fixed_groups
from omniflatten_jax.tokens.chunk_layout import ChunkLayout
from omniflatten_jax.tokens.sequence import FlatSequence, Stream

KINDS = ("reply", "pause", "user_backchannel", "interruption")
BEFORE_S, AFTER_S = 1.0, 2.0  # the traces' span around each event
ELAPSED_BINS_S = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0)  # silence since the user's last frame


def _log_quiet(model, speech_legal, text_legal, speech_silent, text_silent, params, tokens):
    """Predicted at every position, among the legal speech ids and among the legal text ids:
    log P(that stream's silence) and log P(its most likely other id): ``[2, 2, B, T]``."""
    logits = model.logits(params, tokens).astype(jnp.float32)
    out = []
    for legal, silent in ((speech_legal, speech_silent), (text_legal, text_silent)):
        logp = jax.nn.log_softmax(jnp.where(legal, logits, -jnp.inf), axis=-1)
        other = jnp.max(logp.at[..., silent].set(-jnp.inf), axis=-1)
        out.append(jnp.stack([logp[..., silent], other]))
    return jnp.stack(out)


def speak_probability(placed: PlacedModel, layout: TokenLayout, chunk: ChunkLayout,
                      text_legal: np.ndarray, windows: Sequence[Sequence[FlatSequence]], *,
                      batch_size: int = 8) -> list[dict[str, np.ndarray]]:
    """Per dialogue (its consecutive training windows), teacher-forced, per frame of its whole
    chunks:

    * ``speech``: P(speak) at the frame's assistant speech position;
    * ``onset``: P(starting a turn) where it is decided: the first assistant text position
      of the frame's chunk where the stage has assistant text (its text leads its speech,
      so a speech position already sees the turn's text), else ``speech``;
    * ``greedy_ratio``: at that decision position, P(the most likely non-silence id) /
      P(silence): below 1, greedy decoding of the silence as one more id stays silent,
      however likely speaking is in all."""
    speech_silent = layout.special("<silent_speech>")
    speech_legal = layout.id_mask(speech=True, specials=("<silent_speech>",))
    flat = [(d, w) for d, ws in enumerate(windows) for w in ws]
    length = max(len(w.tokens) for _, w in flat)
    fn = placed.jit("speak_probability",
                    functools.partial(_log_quiet, placed.model, speech_legal, text_legal,
                                      speech_silent, layout.special("<silent_text>")),
                    # The masks are baked into the program: they are part of what it is.
                    batch_size, length, speech_legal.tobytes(), text_legal.tobytes(),
                    in_shardings=(placed.param_shardings, placed.batch_sharding(
                        (batch_size, length))), out_shardings=placed.replicated)
    width = dict(chunk.streams)[Stream.USER_SPEECH]
    has_text = Stream.ASSISTANT_TEXT in dict(chunk.streams)
    per_window = []
    for group, n in fixed_groups([w for _, w in flat], batch_size):
        tokens = np.zeros((batch_size, length), np.int32)
        for i, w in enumerate(group):
            tokens[i, :len(w.tokens)] = w.tokens
        log_quiet = placed.get(fn(placed.params, placed.put(tokens, batch=True)))
        for i, w in enumerate(group[:n]):
            # The token at position p is predicted from position p - 1.
            at = np.flatnonzero(w.streams == Stream.ASSISTANT_SPEECH) - 1
            speech = -np.expm1(log_quiet[0, 0, i, at])
            onset, greedy = speech, np.exp(log_quiet[0, 1, i, at] - log_quiet[0, 0, i, at])
            if has_text:
                text = np.flatnonzero(w.streams == Stream.ASSISTANT_TEXT)
                at = text.reshape(-1, dict(chunk.streams)[Stream.ASSISTANT_TEXT])[:, 0] - 1
                onset = np.repeat(-np.expm1(log_quiet[1, 0, i, at]), width)
                greedy = np.repeat(np.exp(log_quiet[1, 1, i, at] - log_quiet[1, 0, i, at]),
                                   width)
            per_window.append({"speech": speech, "onset": onset, "greedy_ratio": greedy})
    result: list[list] = [[] for _ in windows]
    for (d, _), p in zip(flat, per_window):
        result[d].append(p)
    return [{k: np.concatenate([p[k] for p in parts]) for k in parts[0]} for parts in result]


def traces(probability: np.ndarray, anchors: Sequence[int], frame_rate: float) -> np.ndarray:
    """``[events, frames]`` of `probability` from `BEFORE_S` before each anchor frame to
    `AFTER_S` after it (NaN beyond the dialogue)."""
    before, after = int(round(BEFORE_S * frame_rate)), int(round(AFTER_S * frame_rate))
    out = np.full((len(anchors), before + after), np.nan)
    for i, a in enumerate(anchors):
        lo, hi = max(a - before, 0), min(a + after, len(probability))
        out[i, lo - (a - before):hi - (a - before)] = probability[lo:hi]
    return out


def event_anchors(events: Sequence[tuple]) -> dict[str, list[int]]:
    """`turn_taking` events and spans of one dialogue -> anchor frames per `KINDS` kind."""
    anchors: dict[str, list[int]] = {k: [] for k in KINDS}
    for event in events:
        kind = {"assistant": "reply"}.get(event[0], event[0])
        if kind in anchors:
            anchors[kind].append(int(event[1]))
    return anchors


def onset_frames(user_speaking: np.ndarray, assistant_speaking: np.ndarray,
                 events: Sequence[tuple], max_frames: int) -> dict[str, list[tuple[int, int]]]:
    """``(frame, frames of silence since the user's last speech frame)`` where a model
    decides to start or wait, with nothing of the assistant's turn in its context yet: after
    each replied turn end up to the recorded assistant's first speech frame (whose prediction
    precedes it; at most `max_frames`, only while the user is silent) (``reply``), and every
    frame inside each pause (``pause``)."""
    found: dict[str, list[tuple[int, int]]] = {"reply": [], "pause": []}
    for event in events:
        if event[0] == "assistant":
            end = int(event[1])
            for f in range(end, min(end + max_frames, len(assistant_speaking))):
                if user_speaking[f]:
                    break
                found["reply"].append((f, f - end))
                if assistant_speaking[f]:
                    break
        elif event[0] == "pause":
            start, end = int(event[1]), int(event[2])
            for f in range(start, min(end, len(assistant_speaking))):
                found["pause"].append((f, f - start))
    return found


def onset_curves(samples: dict[str, list[tuple[float, int]]], frame_rate: float) -> dict:
    """Mean P(speak) per elapsed-silence bin (`ELAPSED_BINS_S`), for each kind of silence;
    `samples`: kind -> (P(speak), elapsed frames)."""
    edges = np.asarray(ELAPSED_BINS_S + (np.inf,)) * frame_rate
    curves = {}
    for kind, pairs in samples.items():
        p = np.asarray([a for a, _ in pairs], np.float64)
        e = np.asarray([b for _, b in pairs], np.float64)
        which = np.searchsorted(edges, e, side="right") - 1
        curves[kind] = [float(p[which == b].mean()) if np.any(which == b) else None
                        for b in range(len(ELAPSED_BINS_S))]
        curves[kind + "_frames"] = [int(np.sum(which == b)) for b in range(len(ELAPSED_BINS_S))]
    return curves


def event_auc(probability: dict[str, list[float]]) -> float | None:
    """P(the highest P(speak) in a reply gap > the highest inside a pause): what a threshold
    on P(speak) faces (ties count one half); `probability`: kind -> per-event maxima."""
    r = np.asarray(probability.get("reply", ()), np.float64)
    q = np.sort(np.asarray(probability.get("pause", ()), np.float64))
    if not len(r) or not len(q):
        return None
    below = np.searchsorted(q, r, side="left")
    equal = np.searchsorted(q, r, side="right") - below
    return float(np.sum(below + 0.5 * equal) / (len(r) * len(q)))


def onset_auc(samples: dict[str, list[tuple[float, int]]], frame_rate: float) -> float | None:
    """P(a reply-gap frame's P(speak) > a pause frame's), compared within each elapsed-silence
    bin and weighted by the bin's pairs (ties count one half); None without both kinds."""
    edges = np.asarray(ELAPSED_BINS_S + (np.inf,)) * frame_rate
    wins, pairs = 0.0, 0
    split = {}
    for kind in ("reply", "pause"):
        p = np.asarray([a for a, _ in samples.get(kind, ())], np.float64)
        e = np.asarray([b for _, b in samples.get(kind, ())], np.float64)
        split[kind] = (p, np.searchsorted(edges, e, side="right") - 1)
    for b in range(len(ELAPSED_BINS_S)):
        r = split["reply"][0][split["reply"][1] == b]
        q = np.sort(split["pause"][0][split["pause"][1] == b])
        if not len(r) or not len(q):
            continue
        below = np.searchsorted(q, r, side="left")
        equal = np.searchsorted(q, r, side="right") - below
        wins += float(np.sum(below + 0.5 * equal))
        pairs += len(r) * len(q)
    return wins / pairs if pairs else None
