"""The Full-Duplex-Bench v1 harness, offline:

    python -m omniflatten_jax.evaluation.fdb --checkpoint CKPT --root DIR [--task T ...]
        [--words pocketsphinx|output.json] [--scored_only]

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
from omniflatten_jax.evaluation.fdb_score import (
    REFERENCE_ROWS,
    TASKS,
    WORD_SOURCES,
    format_table,
    not_scored,
    samples_of,
    score_task,
    table_row,
    task_of,
)

OUT_FILE = "fdb.json"
SOURCE_FILE = "output_source.json"  # beside output.wav: the checkpoint that wrote it
PROGRESS_EVERY_S = 30.0

log = logging.getLogger(__name__)


def task_dirs(root: str) -> list[str]:
    """`root` itself if it holds numbered samples, else its sub-folders that do."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} is not a folder of FDB samples")
    if samples_of(root):
        return [root]
    found = [os.path.join(root, n) for n in sorted(os.listdir(root))
             if os.path.isdir(os.path.join(root, n)) and samples_of(os.path.join(root, n))]
    if not found:
        raise FileNotFoundError(f"{root} holds no FDB task folders (numbered sample folders "
                                "with input.wav, or folders of them)")
    return found


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
            model(os.path.join(folder, "input.wav"), scratch)
            shutil.move(os.path.join(scratch, "output.wav"), os.path.join(folder, "output.wav"))
        if source is not None:  # written after output.wav: a crash between means "not done"
            _write_json(os.path.join(folder, SOURCE_FILE), source)
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
        output, record = (os.path.join(folder, n) for n in ("output.wav", SOURCE_FILE))
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
    for task_dir in task_dirs(root):
        task, name = task_of(task_dir), os.path.basename(os.path.normpath(task_dir))
        if task not in tasks:
            continue
        results[name] = {"folder": task_dir, **score_task(task_dir, words)}
        for row, file in REFERENCE_ROWS.items():
            if all(os.path.exists(os.path.join(f, file)) for f in samples_of(task_dir)):
                references[row][name] = score_task(task_dir, "pocketsphinx", output=file)
    return {"model": results, **references,
            "not_scored": "FDB's LLM-judged scores (interruption relevance, v1.5 behaviour "
                          "labels) need a hosted model"}


def main(argv=None) -> None:
    import argparse

    from omniflatten_jax.command_errors import add_verbose_flag, one_line_errors
    from omniflatten_jax.inference.policy import add_policy_flags

    parser = argparse.ArgumentParser(prog="python -m omniflatten_jax.evaluation.fdb",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a duplex stage's checkpoint (omit with "
                        "--scored_only)")
    parser.add_argument("--root", required=True, help="FDB sample folders (task folders, or "
                        "one task folder)")
    parser.add_argument("--task", action="append", choices=TASKS, help="only these tasks")
    parser.add_argument("--words", choices=WORD_SOURCES, default="pocketsphinx",
                        help="word times: PocketSphinx (offline), or each sample's output.json "
                        "as an external recogniser wrote it")
    parser.add_argument("--scored_only", action="store_true",
                        help="score the output.wav files already there (no decoding)")
    add_policy_flags(parser)
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    log.addHandler(logging.StreamHandler())  # our progress only, not every library's INFO
    log.setLevel(logging.INFO)
    log.propagate = False
    with one_line_errors(args.verbose):
        tasks = tuple(args.task or TASKS)
        if not args.scored_only:
            if not args.checkpoint:
                raise ValueError("--checkpoint is needed to decode (or give --scored_only)")
            model, source = _duplex_model(args.checkpoint, args)
            for task_dir in task_dirs(args.root):
                if task_of(task_dir) in tasks:
                    stream_samples(model, task_dir, source)
        start = time.perf_counter()
        result = score_root(args.root, tasks, args.words)
        log.info("scored in %.0f s (words: %s; segments: Silero VAD)",
                 time.perf_counter() - start, args.words)
        with open(os.path.join(args.root, OUT_FILE), "w") as f:
            json.dump(result, f, indent=1)
    rows = {"ours": table_row(result["model"])}
    rows |= {row: table_row(result[row]) for row in REFERENCE_ROWS if result[row]}
    print(format_table(rows, not_scored(result["model"])))
    print(f"wrote {os.path.join(args.root, OUT_FILE)}; {result['not_scored']}: not scored")


def _duplex_model(checkpoint_path: str, flags):
    """`model(input_path, out_dir)`: the duplex command's streaming, with the checkpoint read
    once, under its stored decoding policy as the flags change it; and what names that
    model's outputs (its step folder, its parameters' checksums where it has them, and the
    policy: outputs of another policy are streamed again)."""
    from etils import epath

    from omniflatten_jax import checkpoint
    from omniflatten_jax.distributed import paths
    from omniflatten_jax.inference.duplex import DuplexSettings
    from omniflatten_jax.inference.policy import policy_from_flags
    from omniflatten_jax.model.placement import PlacedModel

    meta = checkpoint.load_meta(checkpoint_path)
    directory, step = checkpoint.resolve(checkpoint_path)
    where = paths.join(directory, str(step))
    settings = DuplexSettings.of_checkpoint(meta, where)
    settings = settings.with_policy(policy_from_flags(settings.policy, flags))
    log.info("decoding %s with %s%s", where, settings.policy.describe(),
             "" if meta.decoding else " (the checkpoint stores no policy: the default)")
    tokenizer = checkpoint.load_speech_tokenizer(where)
    sums = epath.Path(where) / "checksums" / "metadata"
    source = {"checkpoint": where, "params_checksums":
              hashlib.sha256(sums.read_bytes()).hexdigest() if sums.exists() else None,
              "decoding": to_dict(settings.policy)}
    return streamer(PlacedModel.restore(where), meta.layout, settings, tokenizer,
                    meta.stage), source


def streamer(placed, layout, settings, tokenizer, name: str):
    """`model(input_path, out_dir)` for `stream_samples`: the duplex command's streaming of
    one recording (the decoder compiles once: `PlacedModel.jit` keeps the calls)."""
    from omniflatten_jax.inference.recording import stream_recording

    def model(input_path: str, out_dir: str) -> None:
        stream_recording(placed, layout, settings, tokenizer, tokenizer, input_path, out_dir,
                         title=f"{name} on {input_path}")

    return model


if __name__ == "__main__":
    main()
