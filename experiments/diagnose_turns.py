"""What each duplex stage learnt about taking the turn, teacher-forced on held-out dialogues.

    python experiments/diagnose_turns.py --workdir=./workdir --out=docs/turn_diagnosis \
        [--stages=duplex_4,duplex_3,duplex_2] [--split=validation] [--config --set]

For every stage: P(speak) frame by frame (`evaluation.speak_probability`) around the
dialogues' replies, pauses, user backchannels and interruptions, beside how often the
recorded assistant speaks at the same moment; and, while the assistant is still silent, P(speak)
by how long the user has been silent, after a turn end and inside a pause. Writes
``speak_probability.png``, ``onset.png`` and ``diagnosis.json`` (with the event-level and the
per-silence AUCs, the figures a lever table quotes) into `--out`.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402  (after the path: run as a script)

FLAGS = flags.FLAGS


def define_flags() -> None:
    from omniflatten_jax.config.stages import CHUNKED_STAGES

    flags.DEFINE_string("workdir", "./workdir", "the workdir whose duplex stages to diagnose")
    flags.DEFINE_string("out", None, "where the pictures and diagnosis.json go", required=True)
    flags.DEFINE_list("stages", list(CHUNKED_STAGES), "the stages to diagnose")
    flags.DEFINE_enum("split", "validation", ("validation", "test"), "which held-out split")
    flags.DEFINE_string("config", "embedded", "a named configuration (experiments/configs)")
    flags.DEFINE_multi_string("set", [], "configuration overrides")


REPLY_WINDOW_S = 0.6  # a reply gap is read at most this long (the simulator replies in 0.1-0.5 s)


def user_speaking(record) -> np.ndarray:
    """Per frame: the user speaks (a turn or a backchannel)."""
    from data_pipelines.records import dialogue_streams, spans

    dialogue = dialogue_streams(record)
    n = len(dialogue.user_speech)
    user = np.zeros(n, bool)
    for t in dialogue.turns:
        if t.role == "user":
            user[t.start:t.end] = True
    for kind, start, end in spans(record):
        if kind == "user_backchannel":
            user[start:end] = True
    return user


def diagnose(cfg, stage: str, workdir: str, records, frame_rate: float) -> dict:
    from data_pipelines.dialogue_examples import duplex_windows
    from experiments.dialogue_stage import record_events
    from omniflatten_jax.checkpoint.placed import restore_placed
    from omniflatten_jax.distributed import paths
    from omniflatten_jax.evaluation import speak_probability as sp
    from omniflatten_jax.inference.duplex import legal_ids
    from omniflatten_jax.stage_plan import plan_stage
    from omniflatten_jax.tokens.sequence import Stream

    plan = plan_stage(cfg, stage)
    placed = restore_placed(paths.join(workdir, stage, "checkpoints"), cfg.mesh,
                                 layout=cfg.layout)
    silent = cfg.layout.special("<silent_speech>")
    windows = [duplex_windows(r, cfg.layout, plan) for r in records]
    text_legal = legal_ids(cfg.layout, Stream.ASSISTANT_TEXT, plan.flatten)
    probability = sp.speak_probability(placed, cfg.layout, plan.chunk, text_legal, windows,
                                       batch_size=cfg.eval.batch_size)
    model_traces = {k: [] for k in sp.KINDS}
    data_traces = {k: [] for k in sp.KINDS}
    onset = {"reply": [], "pause": []}
    peaks = {"reply": [], "pause": []}
    hidden = {"frames": 0, "likely": 0, "greedy_silent": 0}
    reach = int(round(REPLY_WINDOW_S * frame_rate))
    for record, p in zip(records, probability):
        events = record_events(record)
        n = len(p["speech"])
        user = user_speaking(record)[:n]
        assistant = np.asarray(record["assistant_speech"])[:n] != silent
        for kind, anchors in sp.event_anchors(events).items():
            # Whether to start: where the stage decides it; whether to go on: its speech.
            trace = p["onset"] if kind in ("reply", "pause") else p["speech"]
            model_traces[kind].append(sp.traces(trace, anchors, frame_rate))
            data_traces[kind].append(sp.traces(assistant.astype(float), anchors, frame_rate))
        found = sp.onset_frames(user, assistant, events, reach)
        for kind, frames in found.items():
            onset[kind] += [(float(p["onset"][f]), e) for f, e in frames]
        for f, _ in found["reply"]:  # where a model that should start could
            hidden["frames"] += 1
            hidden["likely"] += bool(p["onset"][f] >= 0.5)
            hidden["greedy_silent"] += bool(p["onset"][f] >= 0.5 and p["greedy_ratio"][f] < 1)
        for kind in ("reply", "pause"):  # per event: frames run in order, elapsed restarts
            starts = [i for i, (_, e) in enumerate(found[kind]) if e == 0] + [len(found[kind])]
            for a, b in zip(starts, starts[1:]):
                peaks[kind].append(max(float(p["onset"][f]) for f, _ in found[kind][a:b]))
    stack = lambda ts: np.concatenate(ts) if ts else np.zeros((0, 1))  # noqa: E731
    return {
        "stage": stage, "dialogues": len(records),
        "model": {k: stack(v) for k, v in model_traces.items()},
        "data": {k: stack(v) for k, v in data_traces.items()},
        "onset_curves": sp.onset_curves(onset, frame_rate),
        "onset_auc": sp.onset_auc(onset, frame_rate),
        "event_auc": sp.event_auc(peaks),
        # Cause 1 measured: reply-gap frames where speaking is more likely than not, and
        # those of them where greedy decoding of the silence as one more id stays silent.
        "reply_frames": hidden,
        "peak_p_speak": {k: {"mean": float(np.mean(v)) if v else None,
                             "median": float(np.median(v)) if v else None,
                             "events": len(v)} for k, v in peaks.items()},
    }


def plot(results: list[dict], frame_rate: float, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from omniflatten_jax.evaluation import speak_probability as sp

    titles = {"reply": "user turn end (assistant replies)", "pause": "user pauses mid-turn",
              "user_backchannel": "user backchannels ('mm-hm')",
              "interruption": "user cuts in"}
    fig, axes = plt.subplots(1, len(sp.KINDS), figsize=(4.2 * len(sp.KINDS), 3.8), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, kind in zip(axes, sp.KINDS):
        for i, r in enumerate(results):
            t = r["model"][kind]
            if not len(t):
                continue
            x = (np.arange(t.shape[1]) - sp.BEFORE_S * frame_rate) / frame_rate
            ax.plot(x, np.nanmean(t, axis=0), color=colors[i], label=f"{r['stage']} P(speak)")
            q1, q3 = np.nanpercentile(t, [25, 75], axis=0)
            ax.fill_between(x, q1, q3, color=colors[i], alpha=0.15)
        d = results[-1]["data"][kind]
        if len(d):
            x = (np.arange(d.shape[1]) - sp.BEFORE_S * frame_rate) / frame_rate
            ax.plot(x, np.nanmean(d, axis=0), "k--", lw=1, label="data: assistant speaks")
        ax.axvline(0, color="grey", lw=0.8)
        n = len(results[-1]["model"][kind])
        ax.set(title=f"{titles[kind]} ({n})", xlabel="seconds from the event")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean P(speak), teacher-forced (band: IQR)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "speak_probability.png"), dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.asarray(sp.ELAPSED_BINS_S)
    for i, r in enumerate(results):
        for kind, style in (("reply", "-o"), ("pause", ":s")):
            ys = [np.nan if v is None else v for v in r["onset_curves"][kind]]
            ax.plot(bins, ys, style, color=colors[i], ms=4,
                    label=f"{r['stage']} {'after a turn end' if kind == 'reply' else 'in a pause'}"
                    f" (AUC {r['onset_auc'] or float('nan'):.2f})" * (kind == "reply")
                    or f"{r['stage']} in a pause")
    ax.set(xlabel="seconds the user has been silent (bin start)",
           ylabel="mean P(speak) while the assistant is silent", yscale="log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "onset.png"), dpi=100)
    plt.close(fig)


def main() -> None:
    from data_pipelines.builders.dialogues import data_source
    from data_pipelines.prepare import prepare_dialogues
    from experiments.configs import get_config
    from omniflatten_jax.speech import load_speech_tokenizer

    cfg = get_config(FLAGS.config, FLAGS.set)
    prepared = prepare_dialogues(cfg, FLAGS.workdir)
    source = data_source(prepared.data_dir, prepared.config_name, FLAGS.split, cfg.layout)
    records = [source[i] for i in range(len(source))]
    frame_rate = load_speech_tokenizer(prepared.tokenizer_path).frame_rate
    os.makedirs(FLAGS.out, exist_ok=True)
    results = [diagnose(cfg, stage, FLAGS.workdir, records, frame_rate)
               for stage in FLAGS.stages]
    plot(results, frame_rate, FLAGS.out)
    summary = [{k: v for k, v in r.items() if k not in ("model", "data")} for r in results]
    with open(os.path.join(FLAGS.out, "diagnosis.json"), "w") as f:
        json.dump({"split": FLAGS.split, "workdir": FLAGS.workdir, "stages": summary}, f,
                  indent=1)
    for r in summary:
        print(f"{r['stage']}: {r['dialogues']} {FLAGS.split} dialogues; event AUC (reply gap vs "
              f"pause, peak P(speak)) {r['event_auc']}; per-silence AUC {r['onset_auc']}; "
              f"peak P(speak) {r['peak_p_speak']}; reply-gap frames {r['reply_frames']}")
    print(f"wrote {FLAGS.out}/speak_probability.png, onset.png, diagnosis.json")


if __name__ == "__main__":
    cli.run(main, define_flags)
