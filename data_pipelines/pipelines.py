"""Grain pipelines per stage: read -> lay out (flatten.py) -> pack -> batch -> prefetch.

Rows come out as `omniflatten_jax.batch.FIELDS`, each ``[local_batch, seq_len]``: several
examples packed per row (segment ids start at 1; 0 is padding; positions restart per
example). Each host reads its own shard of the records, and the iterator's state can be saved
and restored (Orbax + `grain.checkpoint`) to resume on the same data.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from omniflatten_jax.batch import FIELDS
from omniflatten_jax.flatten import Stream, asr_sequence, tts_sequence
from omniflatten_jax.stages import StagePlan
from omniflatten_jax.vocab import TokenLayout

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
    """Grain's packing names positions and segment ids after the field they index."""

    def map(self, packed):
        return {k: packed[PACKED_NAMES.get(k, k)] for k in FIELDS}


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
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return ds


def alignment_pipeline(source, *, layout: TokenLayout, seq_len: int, batch_size: int,
                       asr_fraction: float, seed: int, num_packing_bins: int = 8,
                       num_workers: int = 0, process_index: int = 0, process_count: int = 1
                       ) -> grain.IterDataset:
    """Endless, reshuffled each epoch, this host's shard of `source`, as packed rows."""
    ds = grain.MapDataset.source(source)[process_index::process_count]
    if len(ds) == 0:
        raise ValueError("no training examples for this host: the dataset's train split is "
                         f"empty or smaller than the {process_count} hosts")
    ds = ds.seed(seed).shuffle().repeat(None).random_map(AlignmentExample(layout, asr_fraction))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=64))
    return packed_batches(ds, layout=layout, seq_len=seq_len, batch_size=batch_size,
                          num_packing_bins=num_packing_bins, num_workers=num_workers, seed=seed)


def dialogue_pipeline(source, *, plan: StagePlan, layout: TokenLayout, batch_size: int,
                      num_packing_bins: int = 8, num_workers: int = 0, process_index: int = 0,
                      process_count: int = 1) -> grain.IterDataset:
    """Endless packed rows of a dialogue stage's examples (dialogue_examples.py), in rows of
    the plan's ``train.seq_len``, shuffled with its ``train.seed``."""
    from data_pipelines.dialogue_examples import StageExamples

    ds = grain.MapDataset.source(source)[process_index::process_count]
    if len(ds) == 0:
        raise ValueError("no training dialogues for this host")
    seed = plan.train.seed
    ds = ds.seed(seed).shuffle().repeat(None).to_iter_dataset(
        grain.ReadOptions(num_threads=2, prefetch_buffer_size=16))
    ds = grain.experimental.FlatMapIterDataset(ds, StageExamples(layout, plan))
    return packed_batches(ds, layout=layout, seq_len=plan.train.seq_len, batch_size=batch_size,
                          num_packing_bins=num_packing_bins, num_workers=num_workers, seed=seed)
