"""Scoring Full-Duplex-Bench v1 sample folders from their ``output.wav`` (offline metrics).

The folders are FDB's contract (`fdb_folders`): FDB's own release and the ones
`data_pipelines.fdb_samples` writes score the same way; without a backchannel ground truth,
JSD is not reported.

Words come from `fdb_asr.pocketsphinx_words` or, when a sample has one and ``words="output.json"``
is asked for, from its ``output.json``; segments from Silero VAD. Metric definitions:
`fdb_metrics`.
"""

from __future__ import annotations

import os

import numpy as np
import soundfile
import soxr

from omniflatten_jax.evaluation import fdb_metrics as m
from omniflatten_jax.evaluation.fdb_asr import (
    SAMPLE_RATE,
    output_json_words,
    pocketsphinx_words,
    speech_segments,
)
from omniflatten_jax.evaluation.fdb_folders import (
    ANNOTATION_OF,
    BACKCHANNEL_TRUTH,
    OUTPUT,
    read_json,
    samples_of,
    task_of,
)

WORD_SOURCES = ("pocketsphinx", "output.json")

# FDB v1's published results (its README; latency in seconds), for the printed table.
PUBLISHED = {
    "PersonaPlex": (0.584, 0.662, 0.327, 0.025, 0.649, 0.992, 0.070, 1.000, 0.400),
    "dGSLM": (0.934, 0.935, 0.691, 0.015, 0.934, 0.975, 0.352, 0.917, 2.531),
    "Moshi": (0.985, 0.980, 1.000, 0.001, 0.957, 0.941, 0.265, 1.000, 0.257),
    "Freeze-Omni": (0.642, 0.481, 0.636, 0.001, 0.997, 0.336, 0.953, 0.867, 1.409),
    "Gemini Live 2.0": (0.255, 0.310, 0.091, 0.012, 0.896, 0.655, 1.301, 0.891, 1.183),
    "GPT-Realtime": (0.010, 0.120, 0.000, 0.007, 0.980, 1.000, 1.470, 0.970, 1.500),
}
COLUMNS = ("pause TOR synthetic", "pause TOR Candor", "backchannel TOR", "backchannel freq",
           "backchannel JSD", "turn-taking TOR", "turn-taking latency", "interruption TOR",
           "interruption latency")


def load_output(folder: str, name: str = OUTPUT) -> np.ndarray:
    """``output.wav`` (or `name`) as 16 kHz mono float."""
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: stream {folder}/input.wav through the "
                                "model first (the harness does)")
    wave, rate = soundfile.read(path, dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    return wave if rate == SAMPLE_RATE else soxr.resample(wave, rate, SAMPLE_RATE)


def output_words(folder: str, wave: np.ndarray, source: str, from_s: float = 0.0
                 ) -> list[m.Word]:
    """The output's words (starting at or after `from_s`: PocketSphinx hears only the audio
    from there, as FDB's recogniser hears an interruption's output cropped there)."""
    if source == "output.json":
        path = os.path.join(folder, "output.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing (words=output.json reads the word "
                                    "times an external recogniser wrote there)")
        return m.words_after(output_json_words(path), from_s)
    cut = int(round(from_s * SAMPLE_RATE))
    return [m.Word(w.text, w.start + from_s, w.end + from_s)
            for w in pocketsphinx_words(wave[cut:])]


def _annotation(folder: str, name: str) -> list:
    return read_json(os.path.join(folder, name))


def score_task(task_dir: str, words: str = "pocketsphinx", output: str = OUTPUT) -> dict:
    """The task's metrics over its samples (each needs its ``output.wav``; `output` names
    another file to score in its place, e.g. ``reference.wav``: the recorded assistant)."""
    task = task_of(task_dir)
    turns, backchannels, jsds = [], [], []
    truth_path = os.path.join(task_dir, BACKCHANNEL_TRUTH)
    truth = read_json(truth_path) if os.path.exists(truth_path) else None
    for folder in samples_of(task_dir):
        wave = load_output(folder, output)
        source = words if output == OUTPUT else "pocketsphinx"
        if task == "user_interruption":
            end = float(_annotation(folder, ANNOTATION_OF["user_interruption"])[0]["timestamp"][1])
            turns.append(m.turn_score(output_words(folder, wave, source, end), end))
            continue
        found = output_words(folder, wave, source)
        if task == "pause_handling":
            turns.append(m.TurnScore(m.takes_turn(found), None))
        elif task == "smooth_turn_taking":
            end = float(_annotation(folder, ANNOTATION_OF["smooth_turn_taking"])[0]["timestamp"][0])
            turns.append(m.turn_score(found, end))
        else:
            score = m.backchannel_score(speech_segments(wave), found, len(wave) / SAMPLE_RATE)
            backchannels.append(score)
            sample = os.path.basename(folder)
            if truth is not None and sample in truth:
                distribution = np.asarray(truth[sample], np.float64)
                if distribution.ndim != 1 or not distribution.size:
                    raise ValueError(f"{truth_path}: sample {sample}'s ground truth must be a "
                                     f"non-empty list of numbers, got {truth[sample]!r:.80}")
                jsds.append(m.backchannel_jsd(score.backchannels, score.duration_s,
                                              distribution))
    if task == "backchannel":
        result = m.summarize_backchannels(backchannels, jsds) | {"jsd_samples": len(jsds)}
        if truth is not None and not jsds:
            result["jsd"] = None
            result["not_scored"] = (f"backchannel JSD: {truth_path} is keyed by sample folder "
                                    f"name and holds none of {task_dir}'s")
        elif truth is None:
            result["jsd"] = None
            result["not_scored"] = (f"backchannel JSD: no {truth_path} (FDB ships ICC's; our "
                                    "samples have one only from simulated assistant "
                                    "backchannels: --set=dialogue.simulation."
                                    "assistant_backchannel_probability=0.3, say)")
    else:
        result = m.mean_tor_and_latency(turns)
        if task == "pause_handling":
            result.pop("latency_s")
    return {"task": task, "words": words, **result}


def column_of(name: str, task: str) -> int:
    """The published table's column a task folder's TOR fills: pause handling splits into FDB's
    synthetic and Candor sets, told apart by the folder name (FDB's ``candor_pause_handling``);
    ours are synthesised, so synthetic."""
    if task == "pause_handling":
        return 1 if "candor" in name.lower() else 0
    return {"backchannel": 2, "smooth_turn_taking": 5, "user_interruption": 7}[task]


def table_row(results: dict[str, dict]) -> tuple:
    """One row of the published table's columns from `score_task` results by task folder
    name; two folders that fill the same column are an error (score them apart)."""
    row: list = [None] * len(COLUMNS)
    filled: dict[int, str] = {}
    for name, scores in results.items():
        column = column_of(name, scores["task"])
        if column in filled:
            raise ValueError(f"task folders {filled[column]} and {name} both fill the "
                             f"'{COLUMNS[column]}' column: score them with separate --root "
                             "or --task runs")
        filled[column] = name
        if scores["task"] == "backchannel":
            row[2:5] = scores.get("tor"), scores.get("frequency"), scores.get("jsd")
        else:
            row[column] = scores.get("tor")
            if scores["task"] != "pause_handling":
                row[column + 1] = scores.get("latency_s")
    return tuple(row)


def not_scored(results: dict[str, dict]) -> list[str]:
    """Why a column of `results` (by task folder) is "-" though its task was run."""
    return [scores["not_scored"] for scores in results.values() if "not_scored" in scores]


def format_table(rows: dict[str, tuple], notes: list[str] = ()) -> str:
    """Our rows beside FDB v1's published ones; "-" where a task was not run (or where
    `notes` say why it could not be scored)."""
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"  # noqa: E731
    width = max(len(n) for n in (*rows, *PUBLISHED)) + 2
    short = ("pause syn", "pause Candor", "bc TOR", "bc freq", "bc JSD", "tt TOR", "tt lat",
             "int TOR", "int lat")
    lines = [f"{'model':<{width}}" + "".join(f"{c:>13}" for c in short)]
    for name, row in [*rows.items(), *PUBLISHED.items()]:
        lines.append(f"{name:<{width}}" + "".join(f"{fmt(v):>13}" for v in row))
    lines.append("(lower is better for pause TOR, backchannel TOR and JSD, and the latencies; "
                 "the LLM-judged interruption relevance needs a hosted model: not scored)")
    lines += [f"({note})" for note in notes]
    return "\n".join(lines)
