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

import json
import math
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
# JSON files a sample may hold that are not annotations: an external recogniser's word times
# (FDB's step 1) and the harness's record of who wrote output.wav.
OTHER_JSON = ("output.json", SOURCE)
# How far an annotation's time may pass the end of input.wav (rounding of the writer's clock).
ANNOTATION_SLACK_S = 0.05


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
    return _sample_task(folders[0])


def _sample_task(folder: str) -> str:
    for name, task in ANNOTATIONS.items():
        if os.path.exists(os.path.join(folder, name)):
            return task
    return "backchannel"


def check_task(task_dir: str) -> str:
    """The task of a folder of samples once every sample is known to be scorable: its
    ``input.wav`` readable, no JSON file the contract does not name (an annotation this
    harness does not know would be scored as backchannel), one task for every sample, each
    annotation a list of ``{"timestamp": [start, end]}`` starting inside the input (an
    interruption's also ending there: the output is scored from its end), and the
    backchannel ground truth readable. Cheap (headers and small files): the harness runs it on
    every folder before streaming the first sample, so a bad file fails in seconds, by name."""
    import soundfile

    task = task_of(task_dir)
    for folder in samples_of(task_dir):
        wav = os.path.join(folder, INPUT)
        if not os.path.exists(wav):
            raise FileNotFoundError(f"{wav} is missing: every numbered sample folder holds "
                                    "the user's side as input.wav")
        try:
            duration = soundfile.info(wav).duration
        except Exception as e:  # soundfile raises its own error type for a damaged header
            raise ValueError(f"{wav} is not a readable WAV file ({e})") from e
        for name in sorted(os.listdir(folder)):
            if name.endswith(".json") and name not in ANNOTATIONS and name not in OTHER_JSON:
                raise ValueError(
                    f"{os.path.join(folder, name)} is not an annotation this harness knows "
                    f"(FDB v1's: {', '.join(ANNOTATIONS)}; a sample with none is a "
                    "backchannel sample): move the file out, or the folder, to score the "
                    "rest")
        if _sample_task(folder) != task:
            raise ValueError(f"{folder} is a {_sample_task(folder)} sample in a folder of "
                             f"{task} samples ({samples_of(task_dir)[0]}): a task folder holds "
                             "one task")
        if task in ANNOTATION_OF:
            _check_annotation(os.path.join(folder, ANNOTATION_OF[task]), duration,
                              ends_inside=task == "user_interruption")
    truth = os.path.join(task_dir, BACKCHANNEL_TRUTH)
    if task == "backchannel" and os.path.exists(truth):
        if not isinstance(read_json(truth), dict):
            raise ValueError(f"{truth} must map sample folder names to a distribution over "
                             "0.2 s bins, as ICC's ground truth does")
    return task


def read_json(path: str):
    """A JSON file, or a ValueError naming it."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e


def _check_annotation(path: str, duration_s: float, ends_inside: bool) -> None:
    """Each entry a finite span that starts inside the input; with `ends_inside` (an
    interruption: the output is cropped at its end) that ends inside it too."""
    entries = read_json(path)
    shape = (f"FDB's {os.path.basename(path)} is a list of entries, each with "
             '"timestamp": [start_s, end_s]')
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path} holds {str(entries)[:60]!r}: {shape}")
    limit = duration_s + ANNOTATION_SLACK_S
    for entry in entries:
        times = entry.get("timestamp") if isinstance(entry, dict) else None
        if (not isinstance(times, list) or len(times) != 2
                or not all(isinstance(t, (int, float)) and math.isfinite(t) for t in times)
                or times[0] > times[1]):
            raise ValueError(f"{path} holds the entry {str(entry)[:80]!r}: {shape}, "
                             "start <= end")
        if not 0 <= times[0] <= limit:
            raise ValueError(f"{path}: timestamp {times} does not start inside input.wav "
                             f"(0 to {duration_s:.2f} s)")
        if ends_inside and times[1] > limit:
            raise ValueError(f"{path}: the interruption's end, {times[1]} s, is past "
                             f"input.wav's {duration_s:.2f} s (the output is scored from it)")
