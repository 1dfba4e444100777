"""Full-Duplex-Bench v1's folder contract, named once: what a sample folder holds, how a task
folder says which task it is, and the files this project adds beside FDB's.

A task folder holds numbered sample folders (``1/``, ``2/``, ...). Each sample has
``input.wav`` (the user's side) and, once a model has streamed it, ``output.wav`` (the
model's side, the same duration); the task is known by the annotation its samples hold
(``pause.json``, ``turn_taking.json``, ``interrupt.json``); a folder without one is the
backchannel task, whose ground truth (``icc_gt_distribution.json``, keyed by sample number)
sits beside the samples. The samples `data_pipelines.fdb_samples` writes add the recorded
assistant (``reference.wav``) and its speech ids through the speech decoder
(``resynthesised.wav``), scored as rows of their own; the harness adds
``output_source.json`` (which checkpoint and policy wrote ``output.wav``).
"""

from __future__ import annotations

import os

INPUT = "input.wav"
OUTPUT = "output.wav"
SOURCE = "output_source.json"
BACKCHANNEL_TRUTH = "icc_gt_distribution.json"
# The annotation file of each task that has one (FDB's names), and the task it names.
ANNOTATIONS = {"pause.json": "pause_handling", "turn_taking.json": "smooth_turn_taking",
               "interrupt.json": "user_interruption"}
ANNOTATION_OF = {task: name for name, task in ANNOTATIONS.items()}
TASKS = (*ANNOTATIONS.values(), "backchannel")
# Files beside output.wav that score as rows of their own where every sample of a task has
# them (ours do): the recorded assistant, and its speech ids through the decoder.
REFERENCE_ROWS = {"data": "reference.wav", "resynthesised": "resynthesised.wav"}


def samples_of(task_dir: str) -> list[str]:
    """The numbered sample folders of a task folder, in numeric order."""
    names = [n for n in os.listdir(task_dir) if n.isdigit()
             and os.path.isdir(os.path.join(task_dir, n))]
    return [os.path.join(task_dir, n) for n in sorted(names, key=int)]


def task_of(task_dir: str) -> str:
    """Which FDB task a folder of samples is, by the annotation its first sample holds."""
    folders = samples_of(task_dir)
    if not folders:
        raise FileNotFoundError(f"{task_dir} holds no numbered sample folders (1/, 2/, ...)")
    for name, task in ANNOTATIONS.items():
        if os.path.exists(os.path.join(folders[0], name)):
            return task
    return "backchannel"
