"""What the TFDS builders share: non-empty split generators and layout-checked reading."""

from __future__ import annotations

import itertools
import os

import tensorflow_datasets as tfds

from data_pipelines.corpus import InputFileError
from omniflatten_jax.vocab import TokenLayout


def non_empty_splits(generate, inputs: dict) -> dict:
    """``{split: generate(split, inputs[split])}`` for the splits that yield an example.

    TFDS cannot write an empty split (every utterance of it may have been skipped), so such
    splits are left out; reading one later is a clear error (`data_source`).
    """
    splits = {}
    for split, items in inputs.items():
        examples = generate(split, items)
        first = next(examples, None)
        if first is not None:
            splits[split] = itertools.chain([first], examples)
    return splits


def data_source(name: str, data_dir: str, config_name: str, split: str, layout: TokenLayout):
    """The random-access source of one split, after checking its token layout."""
    folder = os.path.join(data_dir, name, config_name)
    layout.check_matches(TokenLayout.load(folder), ours="this run", theirs=f"dataset {folder}")
    builder = tfds.builder(f"{name}/{config_name}", data_dir=data_dir)
    if split not in builder.info.splits:
        raise InputFileError(f"dataset {folder} has no {split!r} examples (see its "
                         "build_report.json for what was skipped)")
    return builder.as_data_source(split=split)
