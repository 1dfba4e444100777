"""Held-out simulated dialogues as Full-Duplex-Bench v1 sample folders.

FDB's contract is a folder per sample holding the user's side as ``input.wav`` and the task's
annotation (FDB v1, arXiv 2503.04721); a model streams ``input.wav`` and writes
``output.wav`` beside it. This writes such folders from the held-out dialogues, so the
harness (`omniflatten_jax.evaluation.fdb`) runs offline on the embedded default (and a stage
chooses its decoding policy on the validation split's, `clips`), and a user can point the
same harness at FDB's own release instead:

* ``pause_handling/N/``: a user turn with a pause in it, from just before it starts to its
  end; ``pause.json`` = ``[{"text": "[PAUSE]", "timestamp": [start, end]}]``.
* ``smooth_turn_taking/N/``: a user turn the assistant replies to, then up to `TAIL_S` of the
  user's open microphone (cut before the user speaks again, backchannels included; under
  `MIN_TAIL_S` left, no sample); ``turn_taking.json`` = ``[{"text": "[TURN-TAKING]",
  "timestamp": [end of the user's turn, end of the clip]}]``.
* ``user_interruption/N/``: the user's turn before an interrupted assistant turn (the
  context), the user's side while the assistant spoke, the interrupting turn, then up to
  `TAIL_S` as above; ``interrupt.json`` = ``[{"context": ..., "interrupt": ...,
  "timestamp": [start, end of the interrupting speech]}]``, with ``context.wav`` and
  ``interrupt.wav``.
* ``backchannel/N/``: a user turn of at least `BACKCHANNEL_TURN_S`; where the simulated
  assistant backchanneled in it (``dialogue.simulation.assistant_backchannel_probability``,
  off by default), those times make the ground-truth distribution of 0.2 s bins in
  ``backchannel/icc_gt_distribution.json`` (FDB keeps ICC's human one there); without any,
  the file is not written and JSD is not scored.

User turns that cut into the assistant make no pause, turn-taking or backchannel sample:
the assistant was speaking as they began. Times are seconds from the clip's start. The user
channel is taken as recorded (speech, its pauses and backchannels, and the simulated
microphone noise) up to the annotated end. Each folder also keeps the
recorded assistant channel of the same span as ``reference.wav``: scored in place of
``output.wav`` it gives the simulated data's own row (its ceiling).
"""

from __future__ import annotations

import json
import os

import numpy as np

from data_pipelines import records
from data_pipelines.records import dialogue_streams, turn_changes
from omniflatten_jax.evaluation.fdb_folders import (
    ANNOTATION_OF,
    BACKCHANNEL_TRUTH,
    INPUT,
    REFERENCE_ROWS,
    TASKS,
)
from omniflatten_jax.speech.audio import save_audio

BACKCHANNEL_TURN_S = 2.0  # a user turn at least this long is a backchannel sample
BIN_S = 0.2  # FDB's backchannel bins
LEAD_S = 0.3  # audio kept before a clip's first speech
TAIL_S = 4.0  # open microphone after the user's last word: time for the model to answer
MIN_TAIL_S = 2.0  # ... cut short where the user speaks again; a shorter tail is no sample
REFERENCE = REFERENCE_ROWS["data"]  # the recorded assistant beside each sample


def _write(folder: str, audio: np.ndarray, sample_rate: int, annotation_name: str,
           annotation: list, extra: dict[str, np.ndarray] | None = None) -> None:
    os.makedirs(folder, exist_ok=True)
    save_audio(os.path.join(folder, INPUT), audio, sample_rate)
    for name, clip in (extra or {}).items():
        save_audio(os.path.join(folder, name), clip, sample_rate)
    if annotation_name is not None:
        with open(os.path.join(folder, annotation_name), "w") as f:
            json.dump(annotation, f, indent=1)


def samples(record, sample_rate: int, frame_rate: float, texts: list[str]):
    """(task, input audio, annotation file name, annotation, extra files, the clip's start in
    the dialogue in seconds) of one record's scorable moments. `texts`: each turn's text."""
    user = np.asarray(record["user_audio"], np.float32) / 32767.0
    if user.size == 0:
        return
    assistant = np.asarray(record["assistant_audio"], np.float32) / 32767.0
    turns = dialogue_streams(record).turns
    changes = turn_changes(record)
    sec = lambda frame: frame / frame_rate  # noqa: E731
    cut = lambda a, b, wave=user: wave[max(0, int(a * sample_rate)):int(b * sample_rate)]  # noqa: E731
    spans = records.spans(record)
    # A user turn that cut into the assistant starts over its speech: no clean sample.
    cut_in = {i + 1 for i, pattern in enumerate(changes) if pattern == "interrupt"}
    clean_at = [i for i, t in enumerate(turns) if t.role == "user" and i not in cut_in]
    clean = [turns[i] for i in clean_at]
    speech = [(t.start, t.end) for t in turns if t.role == "user"] + [
        (start, end) for kind, start, end in spans if kind == "user_backchannel"]
    open_mic = _open_microphone(user, speech, sample_rate / frame_rate)

    def tail(frame: int, lo: float) -> tuple[np.ndarray, float] | None:
        """The user's side from `lo` to `TAIL_S` after the speech ending at `frame`, any
        later user speech (a next turn, a backchannel) replaced by the microphone's noise:
        after FDB's annotated end the input is the open microphone only. None where the
        recording ends under `MIN_TAIL_S` after `frame`."""
        hi = min(sec(frame) + TAIL_S, len(user) / sample_rate)
        if hi - sec(frame) < MIN_TAIL_S:
            return None
        quiet = open_mic(frame)
        return cut(lo, hi, quiet), hi

    for turn in clean:
        if sec(turn.end - turn.start) < BACKCHANNEL_TURN_S:
            continue
        lo, hi = max(0.0, sec(turn.start) - LEAD_S), sec(turn.end)
        truth = np.zeros(int(np.ceil((hi - lo) / BIN_S)))
        for kind, start, end in spans:
            if kind == "assistant_backchannel" and turn.start <= start and end <= turn.end:
                truth[int((sec(start) - lo) / BIN_S):int((sec(end) - lo) / BIN_S) + 1] += 1
        yield ("backchannel", cut(lo, hi), None, truth.tolist() if truth.any() else None,
               {REFERENCE: cut(lo, hi, assistant)}, lo)
    for kind, start, end in spans:
        if kind != "pause":
            continue
        inside = [t for t in clean if t.start <= start and end <= t.end]
        if not inside:
            continue
        turn = inside[0]
        lo = max(0.0, sec(turn.start) - LEAD_S)
        yield ("pause_handling", cut(lo, sec(turn.end)), ANNOTATION_OF["pause_handling"],
               [{"text": "[PAUSE]", "timestamp": [sec(start) - lo, sec(end) - lo]}],
               {REFERENCE: cut(lo, sec(turn.end), assistant)}, lo)
    for i, pattern in enumerate(changes):
        first, second = turns[i], turns[i + 1]
        if i in clean_at and pattern == "reply" and tail(first.end, 0.0) is not None:
            lo = max(0.0, sec(first.start) - LEAD_S)
            clip, hi = tail(first.end, lo)
            yield ("smooth_turn_taking", clip, ANNOTATION_OF["smooth_turn_taking"],
                   [{"text": "[TURN-TAKING]", "timestamp": [sec(first.end) - lo, hi - lo]}],
                   {REFERENCE: cut(lo, hi, assistant)}, lo)
        elif (first.role == "assistant" and pattern == "interrupt" and i > 0
              and tail(second.end, 0.0) is not None):
            context = turns[i - 1]
            lo = max(0.0, sec(context.start) - LEAD_S)
            clip, hi = tail(second.end, lo)
            yield ("user_interruption", clip, ANNOTATION_OF["user_interruption"],
                   [{"context": texts[i - 1], "interrupt": texts[i + 1],
                     "timestamp": [sec(second.start) - lo, sec(second.end) - lo]}],
                   {"context.wav": cut(sec(context.start), sec(context.end)),
                    "interrupt.wav": cut(sec(second.start), sec(second.end)),
                    REFERENCE: cut(lo, hi, assistant)}, lo)


def _open_microphone(user: np.ndarray, speech: list[tuple[int, int]], per_frame: float):
    """`quiet(frame)`: the user channel with every user speech span that starts after
    `frame` replaced by Gaussian noise at the power of the channel's speech-free samples
    (the simulator's noise is white Gaussian), the same noise for the same record."""
    spoken = np.zeros(len(user), bool)
    bounds = [(int(start * per_frame), min(int((end + 1) * per_frame), len(user)))
              for start, end in speech]
    for a, b in bounds:
        spoken[a:b] = True
    level = float(np.std(user[~spoken])) if (~spoken).any() else 0.0
    noise = np.random.default_rng(0).standard_normal(len(user)).astype(np.float32) * level

    def quiet(frame: int) -> np.ndarray:
        wave = user.copy()
        for (start, _), (a, b) in zip(speech, bounds):
            if start > frame:
                wave[a:b] = noise[a:b]
        return wave

    return quiet


def write_samples(records, out_root: str, sample_rate: int, frame_rate: float,
                  decode, per_task: int = 0, resynthesis=None) -> dict[str, int]:
    """Writes the records' samples under `out_root/<task>/<n>/` (at most `per_task` per task,
    0 = all); returns counts per task. `decode`: text ids -> text (the layout's tokenizer).
    With `resynthesis` (``(speech decoder, token layout)``), each sample also gets
    ``resynthesised.wav``: the recorded assistant's own speech ids over the same span, decoded
    as a model's output is (`recording.AssistantAudio`): the ceiling the tokenizer, the
    decoder and the word recogniser leave a perfect model.
    `out_root` must be new or empty: old samples and their output.wav would be scored too."""
    if os.path.isdir(out_root) and os.listdir(out_root):
        raise ValueError(f"{out_root} is not empty: give a new folder for the samples (old "
                         "ones, and their output.wav, would be scored with the new)")
    counts = {task: 0 for task in TASKS}
    truth: dict[str, list] = {}  # backchannel sample -> ground-truth bins
    for record in records:
        bounds = np.concatenate([[0], np.cumsum(record["turn_text_lengths"])])
        texts = [decode(record["text_ids"][bounds[i]:bounds[i + 1]].tolist())
                 for i in range(len(bounds) - 1)]
        for task, audio, name, annotation, extra, start_s in samples(record, sample_rate,
                                                                     frame_rate, texts):
            if per_task and counts[task] >= per_task:
                continue
            counts[task] += 1
            folder = os.path.join(out_root, task, str(counts[task]))
            _write(folder, audio, sample_rate, name, annotation, extra)
            if resynthesis is not None:
                _resynthesise(os.path.join(folder, REFERENCE_ROWS["resynthesised"]), record,
                              start_s, len(extra[REFERENCE]), sample_rate, frame_rate,
                              *resynthesis)
            if task == "backchannel" and annotation is not None:
                truth[str(counts[task])] = annotation
    if truth:
        with open(os.path.join(out_root, "backchannel", BACKCHANNEL_TRUTH), "w") as f:
            json.dump(truth, f)
    return counts


def _resynthesise(path: str, record, start_s: float, samples_: int, sample_rate: int,
                  frame_rate: float, decoder, layout) -> None:
    from omniflatten_jax.inference.recording import AssistantAudio

    first = int(round(start_s * frame_rate))
    n = int(np.ceil(samples_ * frame_rate / sample_rate))
    ids = np.asarray(record["assistant_speech"])[first:first + n]
    audio = AssistantAudio(path, sample_rate, frame_rate, decoder, layout,
                           lambda kind, frame: None)
    audio.add(ids, samples_)
    audio.close(samples_)


def clips(records, tokenizer, layout, decode, per_task: int = 0) -> list:
    """The records' samples as `operating_curve.Clip`s (at most `per_task` per task, 0 = all):
    the user's side tokenized as the harness would hear ``input.wav``, the recorded
    assistant's speaking frames over the same span, and the task's reference time."""
    from omniflatten_jax.evaluation.operating_curve import Clip

    silent = layout.special("<silent_speech>")
    found: list = []
    counts = {task: 0 for task in TASKS}
    for record in records:
        bounds = np.concatenate([[0], np.cumsum(record["turn_text_lengths"])])
        texts = [decode(record["text_ids"][bounds[i]:bounds[i + 1]].tolist())
                 for i in range(len(bounds) - 1)]
        assistant = np.asarray(record["assistant_speech"])
        for task, audio, _, annotation, _, start_s in samples(
                record, tokenizer.sample_rate, tokenizer.frame_rate, texts):
            if per_task and counts[task] >= per_task:
                continue
            counts[task] += 1
            user = layout.speech_ids(tokenizer.encode(audio, tokenizer.sample_rate))
            first = int(round(start_s * tokenizer.frame_rate))
            reference = assistant[first:first + len(user)] != silent
            reference = np.pad(reference, (0, len(user) - len(reference)))
            at_s = {"smooth_turn_taking": lambda: annotation[0]["timestamp"][0],
                    "user_interruption": lambda: annotation[0]["timestamp"][1]}.get(task)
            found.append(Clip(task, np.asarray(user, np.int32), reference,
                              None if at_s is None else float(at_s())))
    return found
