"""A dataset built by Apache Beam: the builder's recipe as one transform per step, on any runner.

TFDS's own Beam support writes the dataset: each split's `_split_generators` entry is a
PTransform (`BuildSplit`) and TFDS shuffles, shards and writes its (key, example) output as
array_record, with the same hashing, sharding and metadata as the single-process build, so
the two write the same records in the same order. No TensorFlow is involved.

Per split the pipeline is::

    list inputs        the launcher's work list (pickled entries in shards on the build's
                       storage, so the job graph stays small at any corpus size), spread
                       over workers
    <recipe steps>     e.g. check text -> read and check audio -> tokenise, each a ParDo that
                       passes the entry on or counts it as skipped
    kept               (id, example) for TFDS's writer
    tally              counts per (split, key) and the first skip messages, written as one
                       JSON file per split that the launcher reads into the build report

Counts also go to Beam metrics (namespace ``omniflatten``, ``<split>/<key>``): a runner's UI
shows progress while it runs, and the launcher logs them. The report itself is built from the
tally files, which are pipeline data and so exact on every runner (metrics may count a retried
bundle twice on some). A worker that stops on a bad input (data.on_bad_input=stop) fails the
pipeline; the launcher raises its message as one line.

Workers share no Python state: each unpickles its transforms, and a context whose tokenizer
came from a file reads that file (`recipe.reduce_with_tokenizer_file`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import pickle
import re

import apache_beam as beam
import threadpoolctl
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from etils import epath

from data_pipelines.builders import recipe as recipes
from data_pipelines.corpus import BadInputError
from data_pipelines.runners import Runner, worker_error

log = logging.getLogger(__name__)

NAMESPACE = "omniflatten"  # of the Beam metrics
WORK_DIR = "_beam"  # beside the dataset in the build's (staging) data_dir
ENTRIES_PER_SHARD = 500
_TALLY = "tally"
# TFDS's Beam writer refuses a split that yields no example.
_EMPTY_SPLIT = re.compile(r"total number of generated examples is 0 for split (\w+)")


def write_work_list(folder: epath.Path, split: str, entries: list) -> list[str]:
    """The split's entries as pickled shards of (index, entry) under `folder`; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = max(1, math.ceil(len(entries) / ENTRIES_PER_SHARD))
    indexed = list(enumerate(entries))
    paths = []
    for k in range(shards):
        part = indexed[k * ENTRIES_PER_SHARD:(k + 1) * ENTRIES_PER_SHARD]
        path = folder / f"{split}-{k:05d}-of-{shards:05d}.pkl"
        path.write_bytes(pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL))
        paths.append(str(path))
    return paths


def _read_shard(path: str):
    yield from pickle.loads(epath.Path(path).read_bytes())


class ListInputs(beam.PTransform):
    """(index, entry) of a split, from its work-list shards, spread over the workers."""

    def __init__(self, paths: list[str]):
        super().__init__()
        self._paths = paths

    def expand(self, root):
        return (root | "shards" >> beam.Create(self._paths)
                | "spread shards" >> beam.Reshuffle()
                | "read" >> beam.FlatMap(_read_shard)
                | "spread entries" >> beam.Reshuffle())


class Step(beam.DoFn):
    """One recipe step: (index, state) -> (index, next state), or a tally record
    (split, key, index, message) of a skipped entry."""

    def __init__(self, recipe, split: str, name: str):
        self._recipe, self._split, self._name = recipe, split, name

    def setup(self):
        self._counters = {}
        # A Beam worker process is one core's worth of work (the DirectRunner starts one per
        # core, Dataflow one per vCPU): numpy's BLAS threads on top oversubscribe the cores,
        # and the mel spectrogram's matrix products ran 2-4x slower for it.
        threadpoolctl.threadpool_limits(1)

    def process(self, element):
        index, state = element
        state = recipes.apply(self._recipe, self._name, self._split, state)
        if isinstance(state, recipes.Skipped):
            self._count(state.what)
            yield beam.pvalue.TaggedOutput(_TALLY, (self._split, state.what, index,
                                                    state.message))
        else:
            yield index, state

    def _count(self, what: str) -> None:
        name = f"{self._split}/{what}"
        if name not in self._counters:
            self._counters[name] = Metrics.counter(NAMESPACE, name)
        self._counters[name].inc()


class Kept(Step):
    """A finished example -> (id, example) for TFDS, and its tally records."""

    def __init__(self, recipe, split: str):
        super().__init__(recipe, split, "kept")

    def process(self, element):
        index, example = element
        for what in self._recipe.kept_keys(example):
            self._count(what)
            yield beam.pvalue.TaggedOutput(_TALLY, (self._split, what, index, None))
        yield example["id"], example


def _write_tally(_, path: str, counts: list, first: list) -> None:
    tally = recipes.Tally()
    for (split, what), n in counts:
        tally.count(split, what, n)
    tally.first = [(recipes.SPLITS.index(s), index, message) for s, _, index, message in first]
    epath.Path(path).write_text(json.dumps(tally.to_json()))


class WriteTally(beam.PTransform):
    """Tally records -> one JSON file: counts per (split, key), first messages in order."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, records):
        counts = (records | "key" >> beam.Map(lambda r: ((r[0], r[1]), 1))
                  | "count" >> beam.CombinePerKey(sum)
                  | "all counts" >> beam.combiners.ToList())
        first = (records | "messages" >> beam.Filter(lambda r: r[3] is not None)
                 | "first" >> beam.combiners.Top.Smallest(recipes.FIRST_SKIPPED,
                                                          key=lambda r: r[2]))
        return (records.pipeline | "once" >> beam.Create([None])
                | "write" >> beam.Map(_write_tally, self._path,
                                      beam.pvalue.AsSingleton(counts),
                                      beam.pvalue.AsSingleton(first)))


class BuildSplit(beam.PTransform):
    """A split's whole pipeline (see the module docstring); returns (id, example). Splits in
    `count_only` (every entry skipped: TFDS would refuse to write them) are built alongside
    for their tally only."""

    def __init__(self, recipe, split: str, paths: list[str], tally_path: str,
                 count_only: tuple = ()):
        super().__init__()
        self._recipe, self._split, self._paths = recipe, split, paths
        self._tally_path, self._count_only = tally_path, count_only

    def expand(self, root):
        examples = _examples(root, self._recipe, self._split, self._paths, self._tally_path)
        for split, paths, tally_path in self._count_only:
            _examples(root, self._recipe, split, paths, tally_path)
        return examples


def _examples(root, recipe, split: str, paths: list[str], tally_path: str):
    states = root | f"{split}: list inputs" >> ListInputs(paths)
    tallies = []
    for name in (*recipe.steps, "kept"):
        step = Kept(recipe, split) if name == "kept" else Step(recipe, split, name)
        out = states | f"{split}: {name}" >> beam.ParDo(step).with_outputs(_TALLY, main="out")
        states = out.out
        tallies.append(out[_TALLY])
    (tallies | f"{split}: tally records" >> beam.Flatten()
     | f"{split}: tally" >> WriteTally(tally_path))
    return states


class BeamSplits:
    """What `RecipeBuilder` gives TFDS in Beam mode: a `BuildSplit` per split with entries,
    and the Beam metrics once the pipeline has run."""

    def __init__(self, recipe, work: dict[str, list[str]], folder: epath.Path,
                 count_only: tuple[str, ...] = ()):
        self.recipe, self.work, self.folder, self.count_only = recipe, work, folder, count_only
        self.metrics: dict[str, int] = {}

    def tally_path(self, split: str) -> str:
        return str(self.folder / f"tally-{split}.json")

    def transforms(self) -> dict[str, BuildSplit]:
        written = [s for s in self.work if s not in self.count_only]
        extra = tuple((s, self.work[s], self.tally_path(s)) for s in self.count_only)
        return {s: BuildSplit(self.recipe, s, self.work[s], self.tally_path(s),
                              extra if s == written[0] else ())
                for s in written}

    def read_metrics(self, result) -> None:
        """The pipeline's counters (committed where the runner has them, else attempted)."""
        try:
            found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
        except (NotImplementedError, AttributeError):  # a runner without metrics
            return
        self.metrics = {}
        for counter in found["counters"]:
            value = counter.committed if counter.committed is not None else counter.attempted
            name = counter.key.metric.name
            self.metrics[name] = self.metrics.get(name, 0) + (value or 0)

    def tally(self) -> recipes.Tally:
        tally = recipes.Tally()
        for split in self.work:
            path = epath.Path(self.tally_path(split))
            if not path.exists():
                raise RuntimeError(f"the Beam pipeline finished without writing {path}")
            tally.merge(recipes.Tally.from_json(json.loads(path.read_text())))
        return tally


def build(make_builder, recipe, entries: dict[str, list], data_dir: str,
          runner: Runner) -> recipes.Tally:
    """Builds with `make_builder(beam=BeamSplits)` on `runner`; returns the tally. A split
    whose entries are all skipped is built again for its counts only (TFDS writes no empty
    split; the single-process build leaves it out the same way)."""
    folder = epath.Path(data_dir) / WORK_DIR
    work = {split: write_work_list(folder / "worklist", split, items)
            for split, items in entries.items() if items}
    count_only: tuple[str, ...] = ()
    while True:
        splits = BeamSplits(recipe, work, folder, count_only)
        if set(count_only) == set(work):
            _nothing_kept(splits, runner)
        builder = make_builder(beam=splits)
        try:
            with _quiet_job_service():
                builder.download_and_prepare(download_config=runner.download_config())
            break
        except Exception as e:  # noqa: BLE001 - a worker's error arrives as the runner's
            message = worker_error(e)
            if message is not None:
                raise BadInputError(message) from None
            empty = _EMPTY_SPLIT.search(str(e))
            if empty is None or empty.group(1) in count_only:
                raise
            count_only += (empty.group(1),)
            # TFDS removed its unfinished output; the rerun repeats the work of every split.
            log.warning("every %s entry was skipped: building again without a %s split "
                        "(it is counted in the report)", empty.group(1), empty.group(1))
    tally = splits.tally()
    _check(builder, tally, splits.metrics)
    folder.rmtree(missing_ok=True)  # the work list and tally files
    return tally


@contextlib.contextmanager
def _quiet_job_service():
    """The DirectRunner's job service relays every worker's log and error to this process's
    log; the error that matters is raised anyway (one line, or in WORKDIR/logs)."""
    relay = logging.getLogger("apache_beam.runners.portability.local_job_service")
    level = relay.level
    relay.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        relay.setLevel(level)


def _nothing_kept(splits: BeamSplits, runner: Runner) -> None:
    """Every entry of every split was skipped: counts them (without TFDS, which has nothing
    to write) and raises an error that says why."""
    config = runner.download_config()
    with beam.Pipeline(runner=config.beam_runner, options=config.beam_options) as root:
        for split, paths in splits.work.items():
            _examples(root, splits.recipe, split, paths, splits.tally_path(split))
    raise recipes.nothing_kept(splits.tally())


def _check(builder, tally: recipes.Tally, metrics: dict[str, int]) -> None:
    """The written splits hold exactly the kept entries, and the metrics agree (logged)."""
    for split, info in builder.info.splits.items():
        if info.num_examples != tally.counts[(split, "kept")]:
            raise RuntimeError(f"the Beam build wrote {info.num_examples} {split} examples "
                               f"but counted {tally.counts[(split, 'kept')]} kept")
    counts = {f"{s}/{w}": n for (s, w), n in sorted(tally.counts.items())}
    if metrics and metrics != counts:
        log.warning("Beam metrics %s differ from the tally %s (a runner that counts retried "
                    "work twice?): the report uses the tally", metrics, counts)
    log.info("Beam metrics (%s): %s", NAMESPACE, metrics or "none from this runner")
