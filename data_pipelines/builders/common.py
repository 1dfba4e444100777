"""What the TFDS builders share: building from a recipe, in this process or on a Beam runner,
non-empty split generators and layout-checked reading."""

from __future__ import annotations

import itertools
import logging
import os
import time

import tensorflow_datasets as tfds

from data_pipelines.builders import recipe as recipes
from data_pipelines.corpus import InputFileError
from data_pipelines.runners import Runner
from omniflatten_jax.config.token_layout import TokenLayout

log = logging.getLogger(__name__)


class RecipeBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A TFDS builder whose examples come from a recipe (`builders.recipe`) over entries per
    split: in this process (`_generate_examples`), or as Beam transforms (`beam`, a
    `beam_build.BeamSplits`) on the runner that `download_and_prepare` is given. The name,
    features and version (subclasses) are the same either way, and so is what is written."""

    PROGRESS_EVERY = 1000  # entries between progress lines of a single-process build

    def __init__(self, *, recipe=None, entries: dict | None = None,
                 tally: recipes.Tally | None = None, beam=None, **kw):
        self._recipe, self._entries, self._tally, self._beam = recipe, entries, tally, beam
        super().__init__(**kw)

    def _split_generators(self, dl_manager):
        if self._beam is not None:
            return self._beam.transforms()
        splits = non_empty_splits(self._generate_examples, self._entries)
        if not splits:
            raise recipes.nothing_kept(self._tally)
        return splits

    def _generate_examples(self, split, entries):
        start = time.perf_counter()
        for index, entry in enumerate(entries):
            example = recipes.run(self._recipe, split, index, entry, self._tally)
            if example is not None:
                yield example["id"], example
            if (index + 1) % self.PROGRESS_EVERY == 0:
                log.info("  %s: %d/%d (%.0f/s)", split, index + 1, len(entries),
                         (index + 1) / (time.perf_counter() - start))

    def _process_pipeline_result(self, pipeline_result) -> None:
        self._beam.read_metrics(pipeline_result)


def build(builder_cls: type[RecipeBuilder], data_dir: str, config_name: str, recipe,
          entries: dict[str, list], runner=None) -> recipes.Tally:
    """Writes the dataset `config_name` of `builder_cls` from `entries` ({split: [entry]}):
    here, one entry after another, or on `runner` (a `runners.Runner`; by default, ``auto``:
    Apache Beam's DirectRunner for a large corpus). Returns
    the tally of kept and skipped entries; the two ways write the same records."""
    tfds.disable_progress_bar()  # our own progress lines are in the log

    def builder(**kw) -> RecipeBuilder:
        return builder_cls(recipe=recipe, data_dir=data_dir, file_format="array_record",
                           config=tfds.core.BuilderConfig(name=config_name), **kw)

    runner = (runner or Runner()).for_entries(sum(len(v) for v in entries.values()))
    log.info("  building %s", runner.described())
    if runner.local:
        tally = recipes.Tally()
        builder(entries=entries, tally=tally).download_and_prepare(
            download_config=tfds.download.DownloadConfig(verify_ssl=False))
    else:
        from data_pipelines import beam_build

        tally = beam_build.build(builder, recipe, entries, data_dir, runner)
    recipe.layout.save(os.path.join(data_dir, builder_cls.name, config_name))
    return tally


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
