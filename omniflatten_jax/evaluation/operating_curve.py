"""A duplex model's operating curve: FDB's turn-taking trade-offs over the decoding policy's knob.

Where the model starts speaking is read from its speak/listen probability through a threshold
(`config.DecodingPolicy.onset_threshold`). Lowering it buys answered turns and interruptions
at the price of speaking into pauses and over the user's long turns; how well a model
separates those cases shows as the curve of FDB turn-taking TOR against pause TOR, and of
interruption TOR against backchannel TOR, over the threshold. A stage sweeps it on its
validation split, draws the curve (`plot_curves`) and stores the point `choose` picks.

The sweep must be cheap (every point decodes every clip), so it scores the model's speech
*tokens* instead of recognised words: each stretch of non-silent assistant speech frames is
cut into pseudo-words of `WORD_S`, its stretches are the voice segments, and FDB's own rules
(`fdb_metrics`: takes_turn, latency, backchannel segments) score them. The clips are FDB's
(`data_pipelines.fdb_samples` cuts them from the dialogues), so the windows, the reference
times and the open microphone are those the harness scores; only the recogniser differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from omniflatten_jax.evaluation import fdb_metrics as m
from omniflatten_jax.inference.duplex import DuplexModel
from omniflatten_jax.inference.session import decode_dialogues

WORD_S = 0.3  # eSpeak's voices speak about 3 words a second
TASKS = ("pause_handling", "backchannel", "smooth_turn_taking", "user_interruption")
# The curve's axes, (x, y) per panel: a model that separates the cases sits top-left.
PANELS = (("pause_handling", "smooth_turn_taking"), ("backchannel", "user_interruption"))


class MuteModelError(RuntimeError):
    """A duplex stage whose model never speaks under the policy chosen for it."""


@dataclasses.dataclass(frozen=True)
class Clip:
    """One FDB sample as speech ids: the user's side as the model hears it, the recorded
    assistant's speaking frames (the data's own point), and the task's reference time
    (turn-taking: the user's turn end; interruption: the interruption's end)."""

    task: str
    user: np.ndarray  # speech ids per frame
    reference: np.ndarray  # bool per frame: the recorded assistant speaks
    at_s: float | None = None


def stretches(speaking: np.ndarray) -> list[tuple[int, int]]:
    """``[(first, end)]`` frames of each run of True."""
    padded = np.concatenate([[False], np.asarray(speaking, bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def token_words(speaking: np.ndarray, frame_rate: float, from_s: float = 0.0) -> list[m.Word]:
    """Pseudo-words of `WORD_S` (the last one shorter) covering each speaking stretch that
    ends after `from_s`, cut there (FDB crops an interruption's output)."""
    words = []
    for first, end in stretches(speaking):
        a, b = max(first / frame_rate, from_s), end / frame_rate
        while a < b - 1e-9:
            words.append(m.Word("w", a, min(a + WORD_S, b)))
            a += WORD_S
    return words


def clip_score(task: str, speaking: np.ndarray, at_s: float | None, frame_rate: float):
    """FDB's score of one clip (`fdb_metrics`) from speaking frames."""
    if task == "user_interruption":
        return m.turn_score(token_words(speaking, frame_rate, at_s), at_s)
    words = token_words(speaking, frame_rate)
    if task == "pause_handling":
        return m.TurnScore(m.takes_turn(words), None)
    if task == "smooth_turn_taking":
        return m.turn_score(words, at_s)
    segments = [(a / frame_rate, b / frame_rate) for a, b in stretches(speaking)]
    return m.backchannel_score(segments, words, len(speaking) / frame_rate)


def score(clips: Sequence[Clip], speaking: Sequence[np.ndarray], frame_rate: float) -> dict:
    """``{task: {"tor", "latency_s"?, "samples"}}`` plus ``spoke``: the share of clips with any
    speech (a policy under which the model never speaks is no operating point)."""
    by_task: dict[str, list] = {t: [] for t in TASKS}
    for clip, frames in zip(clips, speaking):
        by_task[clip.task].append(clip_score(clip.task, frames, clip.at_s, frame_rate))
    result: dict = {}
    for task, scores in by_task.items():
        if not scores:
            continue
        if task == "backchannel":
            result[task] = {"tor": float(np.mean([s.tor for s in scores]))}
        else:
            result[task] = m.mean_tor_and_latency(scores)
        result[task]["samples"] = len(scores)
    result["spoke"] = float(np.mean([np.any(f) for f in speaking])) if speaking else 0.0
    return result


def trade_offs(point: dict) -> tuple[float, float]:
    """Each panel's Youden index: (turn-taking TOR - pause TOR, interruption TOR -
    backchannel TOR); a task without clips counts 0."""
    tor = lambda task: point.get(task, {}).get("tor") or 0.0  # noqa: E731
    return (tor("smooth_turn_taking") - tor("pause_handling"),
            tor("user_interruption") - tor("backchannel"))


def separation(point: dict) -> float:
    """Both trade-offs together: the sum of `trade_offs`."""
    return sum(trade_offs(point))


def choose(points: Sequence[dict]) -> int:
    """The index of the point whose worse trade-off is best (a point that answers every
    interruption by talking into every pause is no compromise), then the best `separation`;
    ties go to the lower turn-taking latency, then to the threshold nearest 0.5 (the plain
    "more likely than not" reading), then to the shorter onset memory."""
    def key(i):
        p = points[i]
        latency = p.get("smooth_turn_taking", {}).get("latency_s")
        late = np.inf if latency is None or np.isnan(latency) else latency
        return (-round(min(trade_offs(p)), 9), -round(separation(p), 9), late,
                abs(p["onset_threshold"] - 0.5), p.get("onset_memory", 0.0))
    return min(range(len(points)), key=key)


def sweep(model: DuplexModel, clips: Sequence[Clip], onsets: Sequence[float],
          frame_rate: float, *, batch_size: int = 16) -> list[dict]:
    """`score` of the clips decoded live under the model's policy with each onset threshold
    (one compile: the thresholds and the memory are data)."""
    silent = model.layout.special("<silent_speech>")
    base = model.settings.policy
    # Decoded longest first: a batch runs to its longest clip, so alike lengths share batches.
    order = sorted(range(len(clips)), key=lambda i: -len(clips[i].user))
    points = []
    for onset in onsets:
        policy = dataclasses.replace(base, onset_threshold=float(onset))
        streams = decode_dialogues(model.with_policy(policy), [clips[i].user for i in order],
                                   batch_size=batch_size)
        speaking: list = [None] * len(clips)
        for i, s in zip(order, streams):
            speaking[i] = s["assistant_speech"].reshape(-1)[:len(clips[i].user)] != silent
        points.append({"onset_threshold": float(onset),
                       "onset_memory": base.onset_memory,
                       **score(clips, speaking, frame_rate)})
    return points


def format_curve(points: Sequence[dict], chosen: int, data: dict | None = None) -> str:
    """The sweep as a table: TOR (and latency) per task and threshold, the chosen row marked."""
    fmt = lambda v: "-" if v is None or np.isnan(v) else f"{v:.3f}"  # noqa: E731
    head = ("memory", "onset", "pause", "bc", "tt", "tt lat", "int", "int lat", "spoke",
            "separation")
    lines = [f"{head[0]:>11}" + "".join(f"{h:>11}" for h in head[1:])]

    def row(name, p):
        get = lambda task, k="tor": p.get(task, {}).get(k)  # noqa: E731
        cells = (get("pause_handling"), get("backchannel"), get("smooth_turn_taking"),
                 get("smooth_turn_taking", "latency_s"), get("user_interruption"),
                 get("user_interruption", "latency_s"), p.get("spoke"), separation(p))
        return f"{name:>22}" + "".join(f"{fmt(v):>11}" for v in cells)

    for i, p in enumerate(points):
        lines.append(row(("* " if i == chosen else "")
                         + f"{p.get('onset_memory', 0.0):g}{p['onset_threshold']:>11g}", p))
    if data is not None:
        lines.append(row("data", data))
    return "\n".join(lines)


def plot_curves(points: Sequence[dict], chosen: int, data: dict | None, path: str,
                title: str) -> None:
    """Two panels (turn-taking vs pause TOR; interruption vs backchannel TOR), one point per
    threshold joined in threshold order (a line per onset memory), the chosen one ringed, the
    data's point a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    names = {"pause_handling": "pause TOR (lower is better)",
             "backchannel": "backchannel TOR (lower is better)",
             "smooth_turn_taking": "turn-taking TOR (higher is better)",
             "user_interruption": "interruption TOR (higher is better)"}
    tor = lambda p, task: p.get(task, {}).get("tor")  # noqa: E731
    memories = sorted({p.get("onset_memory", 0.0) for p in points})
    colors = ("tab:blue", "tab:orange", "tab:purple", "tab:brown")
    for ax, (x, y) in zip(axes, PANELS):
        if any(tor(p, t) is None for p in points for t in (x, y)):
            ax.text(0.5, 0.5, "no clips of this task", ha="center", transform=ax.transAxes)
        else:
            for color, memory in zip(colors * 4, memories):
                line = [p for p in points if p.get("onset_memory", 0.0) == memory]
                xs, ys = [tor(p, x) for p in line], [tor(p, y) for p in line]
                ax.plot(xs, ys, "-o", color=color, ms=4,
                        label=f"model, onset memory {memory:g}, by onset threshold")
                for p, a, b in zip(line, xs, ys):
                    ax.annotate(f"{p['onset_threshold']:g}", (a, b), fontsize=7,
                                textcoords="offset points", xytext=(4, -8))
            best = points[chosen]
            ax.plot(tor(best, x), tor(best, y), "o", ms=13, mfc="none", mec="tab:red", mew=2,
                    label=f"chosen: onset {best['onset_threshold']:g}, memory "
                    f"{best.get('onset_memory', 0.0):g}")
            if data is not None and tor(data, x) is not None and tor(data, y) is not None:
                ax.plot(tor(data, x), tor(data, y), "*", ms=14, color="tab:green",
                        label="data (recorded assistant)")
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03), xlabel=names[x], ylabel=names[y])
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
