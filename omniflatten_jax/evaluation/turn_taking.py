"""Turn-taking metrics of a duplex model, from its generated assistant speech stream.

Definitions (frames are speech tokens; one token lasts ``1000 / frame_rate`` ms, 40 ms at
25 Hz):

* Assistant turn-taking: an event is each point where a user turn ends and the reference
  continues with an assistant reply. ``d`` = frames from the user's last frame + 1 to the
  first non-silent assistant speech token the model generated (0: at once).
* User interruption: an event is each point where the user starts speaking over an assistant
  turn. ``d`` = frames from the user's first frame to the first <silent_speech> the model
  generated (0: it was silent at once).
* Acc@K: the share of events with ``d < K`` (the switch happened within the first K tokens).
* A failure is no switch within 1.5 s (``d * frame_ms >= 1500``, or never before the dialogue
  ends). Failures count as misses for every K. The average response time ``d * frame_ms`` is
  taken over the successes only; the failure rate is reported beside it.
* ``already``: the share of events where the model was in the target state on the frame before
  the event (speaking while the user's last frame was heard; silent when the user cut in).
  These count as ``d = 0`` under the definitions above, as the paper's wording reads; the share
  shows how much of Acc@1 is a model that talks over the user, or was not talking at all.
  ``interruption_speaking`` scores the interruptions where the model was speaking when the
  user cut in, alone: a mute model cannot pass it by being silent already.

Two more kinds are spans the model must sit through rather than switches (Full-Duplex-Bench
tests both; the simulator makes them, `conversation.py`):

* ``pause``: the user stops mid-turn; ``held`` = the share of pauses during which the model
  generated only <silent_speech> (it did not take the floor); ``already`` = the share where it
  was speaking on the frame before the pause began.
* ``user_backchannel``: the user says "mm-hm" while the assistant speaks; ``held`` = the share
  where the model kept speaking (no <silent_speech>) from the backchannel's start until
  ``backchannel_grace_s`` after its end; ``already`` = the share where it was silent on the
  frame before (there was nothing to keep going). The grace is the simulator's
  ``dialogue.simulation.backchannel_margin_s`` of the run (the recorded assistant always goes
  on at least that long), passed by the caller: a setting that changes the data changes the
  score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from omniflatten_jax.inference.duplex import DuplexModel
from omniflatten_jax.inference.session import decode_dialogues

KS = (1, 5, 10, 25)
TIMEOUT_MS = 1500.0
SPAN_KINDS = ("pause", "user_backchannel")


def delay(mask: np.ndarray, start: int) -> int | None:
    """Frames from `start` to the first true entry of `mask` at or after it (None if none)."""
    hits = np.flatnonzero(mask[start:])
    return int(hits[0]) if len(hits) else None


def events(roles: Sequence[str], starts: Sequence[int], ends: Sequence[int],
           boundaries: Sequence[str]) -> list[tuple[str, int]]:
    """``(kind, frame)`` per turn change: "assistant" at a user turn's end followed by a
    reply, "interruption" at the start of a user turn that cut into the assistant."""
    found = []
    for i, pattern in enumerate(boundaries):
        if roles[i] == "user" and roles[i + 1] == "assistant" and pattern == "reply":
            found.append(("assistant", int(ends[i])))
        elif roles[i] == "assistant" and pattern == "interrupt":
            found.append(("interruption", int(starts[i + 1])))
    return found


def span_events(kinds: Sequence[str], starts: Sequence[int], ends: Sequence[int]
                ) -> list[tuple[str, int, int]]:
    """``(kind, first frame, end frame)`` of the scored spans (pauses, user backchannels)."""
    return [(k, int(s), int(e)) for k, s, e in zip(kinds, starts, ends) if k in SPAN_KINDS]


def span_metrics(dialogues, silent_id: int, frame_rate: float, backchannel_grace_s: float
                 ) -> dict:
    """``held`` and ``already`` per span kind (module docstring). A model that stops within
    `backchannel_grace_s` after "mm-hm" took it as a turn."""
    grace = int(round(backchannel_grace_s * frame_rate))
    held = {k: [] for k in SPAN_KINDS}
    already = {k: 0 for k in SPAN_KINDS}
    for speech, found in dialogues:
        silent = np.asarray(speech) == silent_id
        for event in found:
            if len(event) != 3:
                continue
            kind, start, end = event
            if kind == "pause":
                held[kind].append(bool(silent[start:end].all()))
                already[kind] += bool(start > 0 and not silent[start - 1])
            else:
                held[kind].append(not silent[start:end + grace].any())
                already[kind] += bool(start > 0 and silent[start - 1])
    return {k: {"events": len(v), "held": float(np.mean(v)) if v else None,
                "already": already[k] / len(v) if v else None} for k, v in held.items()}


def turn_taking_metrics(dialogues: Sequence[tuple[np.ndarray, list[tuple]]],
                        silent_id: int, frame_rate: float, *, backchannel_grace_s: float,
                        ks: Sequence[int] = KS, timeout_ms: float = TIMEOUT_MS) -> dict:
    """`dialogues`: (generated assistant speech ids per frame, events) pairs: `events`'
    (kind, frame) turn changes and `span_events`' (kind, start, end) spans.
    `backchannel_grace_s`: the run's ``dialogue.simulation.backchannel_margin_s``."""
    frame_ms = 1000.0 / frame_rate
    delays: dict[str, list[float | None]] = {"assistant": [], "interruption": [],
                                             "interruption_speaking": []}
    already = {kind: 0 for kind in delays}
    for speech, found in dialogues:
        speech = np.asarray(speech)
        for event in found:
            if len(event) != 2:
                continue
            kind, frame = event
            mask = speech != silent_id if kind == "assistant" else speech == silent_id
            d = delay(mask, frame)
            d = None if d is None or d * frame_ms >= timeout_ms else d
            was = bool(frame > 0 and mask[frame - 1])
            delays[kind].append(d)
            already[kind] += was
            if kind == "interruption" and frame > 0 and not was:
                delays["interruption_speaking"].append(d)  # it had something to stop
    result = {}
    for kind, ds in delays.items():
        ok = [d for d in ds if d is not None]
        result[kind] = {
            "events": len(ds),
            **{f"acc@{k}": (sum(d < k for d in ok) / len(ds) if ds else None) for k in ks},
            "avg_response_ms": float(np.mean(ok) * frame_ms) if ok else None,
            "failure_rate": (len(ds) - len(ok)) / len(ds) if ds else None,
            "already": already[kind] / len(ds) if ds else None,
        }
    return {"frame_ms": frame_ms, "timeout_ms": timeout_ms, **result,
            **span_metrics(dialogues, silent_id, frame_rate, backchannel_grace_s)}


TurnTakingCase = tuple[np.ndarray, list[tuple]]  # (user speech per frame, events and spans)


def evaluate_turn_taking(model: DuplexModel, cases: Sequence[TurnTakingCase], *,
                         frame_rate: float, backchannel_grace_s: float, batch_size: int = 8
                         ) -> dict:
    """Decodes each held-out dialogue live (user channel fed as recorded, chunk by chunk;
    everything else generated under the model's policy) and scores the generated assistant
    speech."""
    streams = decode_dialogues(model, [u for u, _ in cases], batch_size=batch_size)
    generated = [s["assistant_speech"].reshape(-1)[:len(user)]
                 for s, (user, _) in zip(streams, cases)]
    return turn_taking_metrics([(g, found) for g, (_, found) in zip(generated, cases)],
                               model.layout.special("<silent_speech>"), frame_rate,
                               backchannel_grace_s=backchannel_grace_s)


PAPER = {  # OmniFlatten v2 (arXiv 2410.17799v2): Acc@1/5/10/25 in %, average response in ms
    "assistant": {"acc": (20.6, 53.6, 66.3, 71.7), "avg_response_ms": 193},
    "interruption": {"acc": (10.9, 30.9, 41.8, 51.8), "avg_response_ms": 287},
}


def format_table(result: dict, reference: dict | None = None) -> str:
    """The model's rows, the simulated data's own timing (`reference`: the metrics of the
    recorded assistant channel) and the paper's figures."""
    fmt = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [f"{'turn-taking':<14}{'events':>7}" + "".join(f"{f'Acc@{k}':>8}" for k in KS)
             + f"{'avg ms':>8}{'fail':>6}{'already':>9}"]

    def row(name, r):
        ms = "-" if r["avg_response_ms"] is None else round(r["avg_response_ms"])
        return (f"{name:<14}{r['events']:>7}" + "".join(f"{fmt(r[f'acc@{k}']):>8}" for k in KS)
                + f"{ms:>8}{fmt(r['failure_rate']):>6}{fmt(r.get('already')):>9}")

    for kind in ("assistant", "interruption"):
        lines.append(row(kind, result[kind]))
        if kind == "interruption" and "interruption_speaking" in result:
            lines.append(row("  speaking", result["interruption_speaking"]))
        if reference is not None:
            lines.append(row("  data", reference[kind]))
        paper = PAPER[kind]
        lines.append(f"{'  paper':<14}{'':>7}" + "".join(f"{a:>8}" for a in paper["acc"])
                     + f"{paper['avg_response_ms']:>8}{'':>6}")
    spans = [k for k in SPAN_KINDS if result.get(k, {}).get("events")]
    if spans:
        lines.append(f"{'span':<18}{'events':>7}{'held':>8}{'already':>9}")
        for kind in spans:
            for name, r in ((kind, result[kind]),
                            *((("  data", reference[kind]),) if reference else ())):
                lines.append(f"{name:<18}{r['events']:>7}{fmt(r['held']):>8}"
                             f"{fmt(r['already']):>9}")
    return "\n".join(lines)
