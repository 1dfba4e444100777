"""Dataset build throughput: one process vs Apache Beam's DirectRunner, and what 100k hours take.

    python experiments/benchmark_data_build.py [--config=embedded --data=... --set=...]
        [--workers=2] [--runners=local,direct]

Builds the speech-text and the dialogue dataset of the configuration from scratch with each
runner (the speech tokenizer is fitted once beforehand and shared, as a cluster build ships
it), and prints per dataset and runner: wall time, examples per second, hours of audio per
core-hour (speech-text: the ASR input's duration, the corpus' hours; dialogues: the dialogue's
duration), and the cores that would build the paper's corpora in a day at that rate (100k
hours of speech-text pairs, 2,000 hours of dialogues). Cores are the runner's worker
processes (1 for ``local``); the figures include the runner's start-up, which a corpus of
this size does not amortise.

On a small machine the DirectRunner's launcher (its gRPC data plane) competes with the workers
for the same cores, which a cluster runner's service does not. So the table also gives the
CPU seconds the build's processes spent (the workers' for Beam, read from the exited child
processes) and the projection from audio hours per CPU-hour: what a cluster core delivers.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402

flags.DEFINE_integer("workers", 2, "DirectRunner worker processes")
flags.DEFINE_list("runners", ["local", "direct"], "runners to compare")
flags.DEFINE_integer("audio_files", 0, "if > 0: first write this many utterances of the "
                     "embedded corpus as 16 kHz FLAC files with a manifest, and build from "
                     "them (what a user's corpus is: audio read from files, not synthesised)")
FLAGS = flags.FLAGS

PAPER_HOURS = {"speech-text": 100_000, "dialogues": 2_000}


def audio_hours(prepared, name: str, field: str, frame_rate: float) -> tuple[int, float]:
    """(examples, hours of audio) over every split of a built dataset."""
    import tensorflow_datasets as tfds

    examples, frames = 0, 0
    for split in ("train", "validation", "test"):
        try:
            source = tfds.data_source(f"{name}/{prepared.config_name}",
                                      data_dir=prepared.data_dir, split=split)
        except Exception:  # noqa: BLE001 - a split the build left out
            continue
        examples += len(source)
        frames += sum(len(source[i][field]) for i in range(len(source)))
    return examples, frames / frame_rate / 3600


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def write_audio_files(root: str, count: int) -> str:
    """`count` embedded utterances (user voices) as 16 kHz FLAC files; the manifest's path."""
    import json

    import soundfile

    from data_pipelines.corpus import embedded_items
    from omniflatten_jax.config import DataConfig

    folder = os.path.join(root, "audio")
    os.makedirs(folder)
    items = [it for split in embedded_items(DataConfig()).values() for it in split
             if len(it.text) <= 100][:count]
    lines = []
    for item in items:
        path = os.path.join(folder, f"{item.id}.flac")
        soundfile.write(path, item.audio.load(16_000, 0.0), 16_000)
        lines.append(json.dumps({"id": item.id, "audio": path, "text": item.text,
                                 "speaker": item.speaker}))
    manifest = os.path.join(root, "manifest.jsonl")
    with open(manifest, "w") as f:
        f.write("\n".join(lines) + "\n")
    return manifest


def main(argv) -> None:
    from data_pipelines.builders import dialogues, speech_text
    from data_pipelines.prepare import prepare_dialogues, prepare_speech_text
    from data_pipelines.runners import Runner

    cli.start()
    root = tempfile.mkdtemp(prefix="data-build-bench-")
    extra = [f"data.source=manifest:{write_audio_files(root, FLAGS.audio_files)}"
             ] if FLAGS.audio_files else []
    cfg = cli.build_config(extra)
    frame_rate = cfg.speech.mel.frame_rate
    kinds = [("speech-text", prepare_speech_text, speech_text.NAME, "speech_ids"),
             ("dialogues", prepare_dialogues, dialogues.NAME, "user_speech")]
    if FLAGS.audio_files:
        kinds = kinds[:1]
    try:
        # The tokenizer fit is not part of what is timed: fitted once, copied to each run.
        fit = os.path.join(root, "fit")
        prepare_speech_text(cfg, fit)
        tokenizers = [p for p in os.listdir(os.path.join(fit, "data"))
                      if p.startswith("speech_tokenizer-")]
        rows = []
        for kind, prepare, name, field in kinds:
            for runner_name in FLAGS.runners:
                runner = (Runner() if runner_name == "local" else
                          Runner(runner_name, (f"--direct_num_workers={FLAGS.workers}",)))
                cores = 1 if runner.local else FLAGS.workers
                workdir = os.path.join(root, f"{kind}-{runner_name}")
                os.makedirs(os.path.join(workdir, "data"))
                for tok in tokenizers:
                    shutil.copy(os.path.join(fit, "data", tok), os.path.join(workdir, "data"))
                who = resource.RUSAGE_SELF if runner.local else resource.RUSAGE_CHILDREN
                cpu0, start = _cpu_seconds(who), time.perf_counter()
                prepared = prepare(cfg, workdir, runner)
                wall, cpu = time.perf_counter() - start, _cpu_seconds(who) - cpu0
                examples, hours = audio_hours(prepared, name, field, frame_rate)
                per_core_hour = hours / (wall / 3600 * cores)
                per_cpu_hour = hours / (cpu / 3600)
                rows.append((kind, runner_name, cores, wall, examples, examples / wall, hours,
                             per_core_hour, cpu, per_cpu_hour,
                             PAPER_HOURS[kind] / (per_cpu_hour * 24), prepared.fingerprint[:12]))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'dataset':<12} {'runner':<7} {'cores':>5} {'wall s':>7} {'examples':>8} "
          f"{'ex/s':>6} {'audio h':>8} {'h/core-h':>9} {'CPU s':>7} {'h/CPU-h':>8} "
          f"{'cores for paper/day':>19} fingerprint")
    for kind, runner_name, cores, wall, n, rate, hours, per_core, cpu, per_cpu, need, fp in rows:
        print(f"{kind:<12} {runner_name:<7} {cores:>5} {wall:>7.1f} {n:>8} {rate:>6.1f} "
              f"{hours:>8.3f} {per_core:>9.1f} {cpu:>7.1f} {per_cpu:>8.1f} {need:>19.0f} {fp}")
    for kind in PAPER_HOURS:
        base = next((r for r in rows if r[0] == kind and r[1] == "local"), None)
        for r in rows:
            if base and r[0] == kind and r is not base:
                print(f"{kind}: {r[1]} vs local: {base[3] / r[3]:.2f}x wall, "
                      f"{r[7] / base[7]:.2f}x per core, {r[9] / base[9]:.2f}x per CPU second")


if __name__ == "__main__":
    cli.define_flags()
    app.run(main)
