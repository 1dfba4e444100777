"""Dataset build throughput: one process vs Apache Beam's DirectRunner, and what 100k hours take.

    python experiments/benchmark_data_build.py [--config=embedded --data=... --set=...]
        [--workers=2] [--runners=local,direct]

Builds the speech-text and the dialogue dataset of the configuration from scratch with each
runner (the speech tokenizer is fitted once beforehand and shared, as a cluster build ships
it), and prints per dataset and runner: wall time, examples per second, hours of audio per
core-hour (speech-text: the ASR input's duration, the corpus' hours; dialogues: the dialogue's
duration) per CPU-hour of the work, and the cores that would build the paper's corpora in a
day at that rate (100k hours of speech-text pairs, 2,000 hours of dialogues).

The work's CPU time is the build process's for ``local`` (numpy's threads make it use more
than one core) and the exited worker processes' for Beam. The DirectRunner's launcher (its
gRPC data plane) competes with the workers for this machine's cores, which a cluster runner's
service does not; its CPU time is shown apart. Wall times include the runner's start-up,
which a corpus of this size does not amortise.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_integer("workers", 2, "DirectRunner worker processes")
    flags.DEFINE_list("runners", ["local", "direct"], "runners to compare")
    flags.DEFINE_integer("audio_files", 0, "if > 0: first write this many utterances of the "
                         "embedded corpus as 16 kHz FLAC files with a manifest, and build from "
                         "them (what a user's corpus is: audio read from files, not synthesised)")
    cli.define_experiment_flags()


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


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its exited children."""
    return tuple(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                   resource.getrusage(resource.RUSAGE_CHILDREN)))


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


def main() -> None:
    from data_pipelines.builders import dialogues, speech_text
    from data_pipelines.corpus import speech_text_items
    from data_pipelines.inputs import speech_text_inputs
    from data_pipelines.prepare import prepare_dialogues, prepare_speech_text, speech_tokenizer
    from data_pipelines.runners import Runner
    from omniflatten_jax.config.stages import ALIGNMENT
    from omniflatten_jax.stage_plan import plan_stage

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
        fit = os.path.join(root, "fit", "data")
        items = speech_text_items(cfg.data, plan_stage(cfg, ALIGNMENT).train.seed)
        inputs = speech_text_inputs(cfg.data.source, cfg.data.language, items)
        tokenizers = [speech_tokenizer(cfg, fit, items, inputs.key)]
        rows = []
        for kind, prepare, name, field in kinds:
            for runner_name in FLAGS.runners:
                runner = (Runner() if runner_name == "local" else
                          Runner(runner_name, (f"--direct_num_workers={FLAGS.workers}",)))
                workdir = os.path.join(root, f"{kind}-{runner_name}")
                os.makedirs(os.path.join(workdir, "data"))
                for tok in tokenizers:
                    shutil.copy(tok, os.path.join(workdir, "data"))
                before, start = _cpu_seconds(), time.perf_counter()
                prepared = prepare(cfg, workdir, runner)
                wall = time.perf_counter() - start
                own, children = (after - b for after, b in zip(_cpu_seconds(), before))
                # The work: this process's CPU for a local build, the exited workers' for Beam.
                work, launcher = (own, 0.0) if runner.local else (children, own)
                examples, hours = audio_hours(prepared, name, field, frame_rate)
                per_cpu_hour = hours / (work / 3600)
                rows.append((kind, runner_name, wall, examples, hours, work, launcher,
                             per_cpu_hour, PAPER_HOURS[kind] / (per_cpu_hour * 24),
                             prepared.fingerprint[:12]))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'dataset':<12} {'runner':<7} {'wall s':>7} {'examples':>8} {'ex/s':>6} "
          f"{'audio h':>8} {'work CPU s':>10} {'busy cores':>10} {'launcher CPU s':>14} "
          f"{'h/CPU-h':>8} {'cores for paper/day':>19} fingerprint")
    for kind, runner_name, wall, n, hours, work, launcher, per_cpu, need, fp in rows:
        print(f"{kind:<12} {runner_name:<7} {wall:>7.1f} {n:>8} {n / wall:>6.1f} {hours:>8.3f} "
              f"{work:>10.1f} {work / wall:>10.2f} {launcher:>14.1f} {per_cpu:>8.1f} "
              f"{need:>19.1f} {fp}")
    for kind in PAPER_HOURS:
        base = next((r for r in rows if r[0] == kind and r[1] == "local"), None)
        for r in rows:
            if base and r[0] == kind and r is not base:
                print(f"{kind}: {r[1]} vs local: {base[2] / r[2]:.2f}x wall, "
                      f"{r[7] / base[7]:.2f}x audio per work CPU second")


if __name__ == "__main__":
    cli.run(main, define_flags)
