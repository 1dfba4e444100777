"""The Full-Duplex-Bench v1 harness, offline (the command: ``experiments/fdb.py``).

For every sample folder under `DIR` (a task folder of numbered samples, or a folder of task
folders: FDB's own release, or the folders `data_pipelines.fdb_samples` writes), streams
``input.wav`` through the duplex decoder exactly as the duplex command does
(`inference.recording.stream_recording`) and writes ``output.wav`` beside it (FDB's
contract); then scores each task (`fdb_score`) and writes ``DIR/fdb.json`` and a table beside
FDB's published rows. Where the samples keep ``reference.wav`` (ours do: the recorded
assistant channel), a ``data`` row scores that too, and ``resynthesised.wav`` (the recorded
assistant's speech ids through the speech decoder) a ``resynthesised`` row. The LLM-judged
scores need a hosted model and are not computed; the output says so.

A rerun resumes: ``output_source.json`` beside each ``output.wav`` names the checkpoint that
wrote it, and samples this checkpoint already streamed are not streamed again (each
``output.wav`` appears whole, or not at all). Outputs of another checkpoint, or of none named,
are removed before a task is streamed, so a task never holds two models' outputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time

from omniflatten_jax.config import to_dict
from omniflatten_jax.evaluation.fdb_folders import (
    INPUT,
    OUTPUT,
    REFERENCE_ROWS,
    SOURCE,
    TASKS,
    check_task,
    samples_of,
)
from omniflatten_jax.evaluation.fdb_score import column_of, score_task
from omniflatten_jax.inference.duplex import DuplexModel

OUT_FILE = "fdb.json"
PROGRESS_EVERY_S = 30.0

log = logging.getLogger(__name__)


def task_dirs(root: str) -> list[str]:
    """`root` itself if it holds numbered samples, else its sub-folders that do."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} is not a folder of FDB samples")
    if samples_of(root):
        return [root]
    folders = [os.path.join(root, n) for n in sorted(os.listdir(root))
               if os.path.isdir(os.path.join(root, n))]
    found = [f for f in folders if samples_of(f)]
    if not found:
        raise FileNotFoundError(f"{root} holds no FDB task folders (numbered sample folders "
                                "with input.wav, or folders of them)")
    for folder in sorted(set(folders) - set(found)):
        log.info("%s: not a task folder (no numbered sample folders): ignored", folder)
    return found


def check_root(root: str, tasks=TASKS) -> list[tuple[str, str]]:
    """(task folder, task) of every task folder under `root` whose task is among `tasks`, each
    checked by `fdb_folders.check_task`, and no two filling one column of the published
    table: everything that could fail the scoring, found before the first sample streams."""
    checked, columns = [], {}
    for task_dir in task_dirs(root):
        task = check_task(task_dir)
        if task not in tasks:
            continue
        name = os.path.basename(os.path.normpath(task_dir))
        column = column_of(name, task)
        if column in columns:
            raise ValueError(f"task folders {columns[column]} and {task_dir} are both "
                             f"{task} (by their annotations) and would fill one column of "
                             "FDB's table: score them with separate --root or --task runs")
        columns[column] = task_dir
        checked.append((task_dir, task))
    return checked


def stream_samples(model, task_dir: str, source: dict | None = None) -> int:
    """``output.wav`` for every sample of a task folder; `model(input_path, out_dir)` writes
    it into `out_dir`. With `source` (what names the checkpoint), samples with that
    checkpoint's output are kept, the others' outputs removed and streamed again. Returns how
    many were streamed; logs progress (FDB v1 holds 727)."""
    folders = samples_of(task_dir)
    if source is not None:
        folders = _not_streamed_by(source, task_dir, folders)
    start = last = time.perf_counter()
    for n, folder in enumerate(folders, start=1):
        with tempfile.TemporaryDirectory() as scratch:
            model(os.path.join(folder, INPUT), scratch)
            shutil.move(os.path.join(scratch, OUTPUT), os.path.join(folder, OUTPUT))
        if source is not None:  # written after output.wav: a crash between means "not done"
            _write_json(os.path.join(folder, SOURCE), source)
        now = time.perf_counter()
        if n == len(folders) or now - last > PROGRESS_EVERY_S:
            last = now
            log.info("%s: streamed %d/%d samples (%.1f s each)", task_dir, n, len(folders),
                     (now - start) / n)
    return len(folders)


def _not_streamed_by(source: dict, task_dir: str, folders: list[str]) -> list[str]:
    """The sample folders without `source`'s output.wav, once any other output is removed."""
    todo = []
    for folder in folders:
        output, record = (os.path.join(folder, n) for n in (OUTPUT, SOURCE))
        try:
            with open(record) as f:
                done = json.load(f) == source and os.path.exists(output)
        except (OSError, ValueError):  # none, or cut short
            done = False
        if not done:
            for path in (record, output):
                if os.path.exists(path):
                    os.remove(path)
            todo.append(folder)
    if len(todo) < len(folders):
        log.info("%s: %d of %d samples already streamed by this checkpoint", task_dir,
                 len(folders) - len(todo), len(folders))
    return todo


def _write_json(path: str, value) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


def score_root(root: str, tasks=TASKS, words: str = "pocketsphinx") -> dict:
    """Scores of every task folder under `root`, keyed by folder name (each names its
    ``task``), and of the recorded assistant channel where the samples keep it."""
    results = {}
    references: dict[str, dict] = {row: {} for row in REFERENCE_ROWS}
    for task_dir, _ in check_root(root, tasks):
        name = os.path.basename(os.path.normpath(task_dir))
        results[name] = {"folder": task_dir, **score_task(task_dir, words)}
        for row, file in REFERENCE_ROWS.items():
            if all(os.path.exists(os.path.join(f, file)) for f in samples_of(task_dir)):
                references[row][name] = score_task(task_dir, "pocketsphinx", output=file)
    return {"model": results, **references,
            "not_scored": "FDB's LLM-judged scores (interruption relevance, v1.5 behaviour "
                          "labels) need a hosted model"}


def output_source(model: DuplexModel) -> dict:
    """What names a model's outputs: its step folder, its parameters' checksums where it has
    them, and the policy (outputs of another policy are streamed again)."""
    from etils import epath

    sums = epath.Path(model.where) / "checksums" / "metadata"
    return {"checkpoint": model.where, "params_checksums":
            hashlib.sha256(sums.read_bytes()).hexdigest() if sums.exists() else None,
            "decoding": to_dict(model.settings.policy)}


def streamer(model: DuplexModel):
    """`model(input_path, out_dir)` for `stream_samples`: the duplex command's streaming of
    one recording (the session compiles once: `PlacedModel.jit` keeps the calls)."""
    from omniflatten_jax.inference.recording import stream_recording

    def stream(input_path: str, out_dir: str) -> None:
        stream_recording(model, input_path, out_dir, title=f"{model.stage} on {input_path}")

    return stream
