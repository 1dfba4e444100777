"""Grain pipelines per stage: read -> lay out (`tokens`) -> pack -> batch -> prefetch.

Rows come out as `omniflatten_jax.tokens.batches.FIELDS`, each ``[global_batch, seq_len]``: several
examples packed per row (segment ids start at 1; 0 is padding; positions restart per
example).

The order of examples and batches is a function of the seed and the step only, never of the
host count: every host runs the same pipeline over all records and produces the same global
batch, of which each device takes its own rows (`TrainProgram.global_batch`). So one process
and many see the same batches, and a run resumes on any number of hosts or mesh shape from
one saved iterator state (JSON, equal on every host). The price is that every host reads and
packs the whole global batch; with token ids (not audio) as records this is a few MB per step.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import signal
import sys
import threading
import time

import grain
import numpy as np

from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.stage_plan import StagePlan
from omniflatten_jax.tokens.batches import FIELD_DTYPES, FIELDS
from omniflatten_jax.tokens.sequence import Stream, asr_sequence, tts_sequence

EXAMPLE_FIELDS = ("tokens", "streams", "loss_mask")  # what packing aligns; it adds the rest
PACKED_NAMES = {"positions": "tokens_positions", "segment_ids": "tokens_segment_ids"}


@dataclasses.dataclass(frozen=True)
class AlignmentExample(grain.transforms.RandomMap):
    """A speech-text record -> an ASR example (probability `asr_fraction`) or a TTS one."""

    layout: TokenLayout
    asr_fraction: float

    def random_map(self, record, rng: np.random.Generator):
        if rng.random() < self.asr_fraction:
            seq = asr_sequence(self.layout, record["speech_ids"], record["text_ids"])
        else:
            seq = tts_sequence(self.layout, record["text_ids"], record["tts_speech_ids"])
        return {"tokens": seq.tokens, "streams": seq.streams, "loss_mask": seq.loss_mask}


@dataclasses.dataclass(frozen=True)
class CheckLength(grain.transforms.Map):
    """The builders drop examples longer than the row; one reaching here is a stale dataset."""

    seq_len: int

    def map(self, example):
        if len(example["tokens"]) > self.seq_len:
            raise ValueError(f"an example of {len(example['tokens'])} tokens exceeds the row "
                             f"length {self.seq_len}: the dataset was built for a longer "
                             "train.seq_len; delete WORKDIR/data/tfds to rebuild it")
        return example


@dataclasses.dataclass(frozen=True)
class RenamePacked(grain.transforms.Map):
    """Grain's packing names positions and segment ids after the field they index; the
    compiled train step takes each field in one dtype (`tokens.batches.FIELD_DTYPES`)."""

    def map(self, packed):
        return {k: np.asarray(packed[PACKED_NAMES.get(k, k)], FIELD_DTYPES[k]) for k in FIELDS}


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_parent(parent: int, worker_index: int, worker_count: int) -> None:
    """Runs in each Grain worker (bound to the training process's pid, `parent`): exit once
    that process is gone. A worker outlives a parent killed with SIGKILL (its orphans held
    about 270 MB each), and no signal reaches it then. On Linux the kernel kills it with its
    parent (``PR_SET_PDEATHSIG``: needs no Python thread, which a worker blocked in Grain's
    queue may never schedule); elsewhere a thread watches the parent id. A worker still
    starting when its parent died (it finds another parent) exits at once."""
    if os.getppid() != parent:
        os._exit(0)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # the parent died before the call took effect
                os._exit(0)
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def packed_batches(examples: grain.IterDataset, *, layout: TokenLayout, seq_len: int,
                   batch_size: int, num_packing_bins: int, num_workers: int, seed: int
                   ) -> grain.IterDataset:
    """Laid-out examples -> packed, batched rows (the part shared by every stage)."""
    ds = grain.experimental.FirstFitPackIterDataset(
        examples.map(CheckLength(seq_len)), length_struct={k: seq_len for k in EXAMPLE_FIELDS},
        num_packing_bins=num_packing_bins, seed=seed, shuffle_bins=True,
        padding_struct={"tokens": layout.special("<pad>"), "streams": int(Stream.PAD),
                        "loss_mask": False})
    ds = ds.map(RenamePacked()).batch(batch_size, drop_remainder=True)
    if num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                            worker_init_fn=functools.partial(exit_with_parent, os.getpid()))
    return ds


def alignment_pipeline(source, *, layout: TokenLayout, seq_len: int, batch_size: int,
                       asr_fraction: float, seed: int, num_packing_bins: int = 8,
                       num_workers: int = 0) -> grain.IterDataset:
    """Endless, reshuffled each epoch, all of `source` as packed global batches."""
    ds = grain.MapDataset.source(source)
    if len(ds) == 0:
        raise ValueError("no training examples: the dataset's train split is empty")
    ds = ds.seed(seed).shuffle().repeat(None).random_map(AlignmentExample(layout, asr_fraction))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=64))
    return packed_batches(ds, layout=layout, seq_len=seq_len, batch_size=batch_size,
                          num_packing_bins=num_packing_bins, num_workers=num_workers, seed=seed)


def dialogue_pipeline(source, *, plan: StagePlan, layout: TokenLayout, batch_size: int,
                      num_packing_bins: int = 8, num_workers: int = 0) -> grain.IterDataset:
    """Endless packed global batches of a dialogue stage's examples (dialogue_examples.py), in
    rows of the plan's ``train.seq_len``, shuffled with its ``train.seed``."""
    from data_pipelines.dialogue_examples import StageExamples

    ds = grain.MapDataset.source(source)
    if len(ds) == 0:
        raise ValueError("no training dialogues: the dataset's train split is empty")
    seed = plan.train.seed
    ds = ds.seed(seed).shuffle().repeat(None).to_iter_dataset(
        grain.ReadOptions(num_threads=2, prefetch_buffer_size=16))
    ds = grain.experimental.FlatMapIterDataset(ds, StageExamples(layout, plan))
    return packed_batches(ds, layout=layout, seq_len=plan.train.seq_len, batch_size=batch_size,
                          num_packing_bins=num_packing_bins, num_workers=num_workers, seed=seed)
