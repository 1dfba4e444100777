"""Where a dataset is built: in this process, or by an Apache Beam runner.

``local`` runs the builder's recipe one entry after another in the calling process (no Beam,
no worker start-up). The Beam runners run the same recipe as a pipeline (`beam_build`):
``direct`` on this machine, one worker process per core by default; ``dataflow``, ``flink``
and ``spark`` on a cluster, configured by Beam's own pipeline options, passed through
unchanged (``python experiments/prepare.py ... -- --project=... --region=...``). ``auto``
(what `run.py` uses when it finds no dataset) is ``local`` for a corpus under
`AUTO_BEAM_MIN_ENTRIES` entries, where starting Beam's workers costs more than they save, and
``direct`` above it (docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re

BEAM_RUNNERS = {"direct": "DirectRunner", "dataflow": "DataflowRunner",
                "flink": "FlinkRunner", "spark": "SparkRunner"}
RUNNERS = ("auto", "local", *BEAM_RUNNERS)
# On 2 cores the DirectRunner built 3,890 embedded utterances in 40 s against one process's
# 64 s, and 604 dialogues in the same time; its start-up costs about 10 s.
AUTO_BEAM_MIN_ENTRIES = 2000


@dataclasses.dataclass(frozen=True)
class Runner:
    name: str = "auto"  # one of RUNNERS
    beam_args: tuple[str, ...] = ()  # Beam pipeline options, e.g. ("--direct_num_workers=4",)

    def __post_init__(self):
        if self.name not in RUNNERS:
            raise ValueError(f"unknown runner {self.name!r}: use one of {', '.join(RUNNERS)}")
        if self.name in ("local", "auto") and self.beam_args:
            raise ValueError(f"Beam pipeline options {list(self.beam_args)} need a Beam runner "
                             f"({', '.join(BEAM_RUNNERS)}), not --runner={self.name}")

    @property
    def local(self) -> bool:
        return self.name == "local"

    def for_entries(self, entries: int) -> "Runner":
        """The runner to build `entries` entries with: this one, or what ``auto`` picks."""
        if self.name != "auto":
            return self
        if entries < AUTO_BEAM_MIN_ENTRIES or importlib.util.find_spec("apache_beam") is None:
            return Runner("local")
        return Runner("direct")

    def described(self) -> str:
        if self.name == "auto":
            return "in this process or on Beam's DirectRunner, by corpus size"
        return "in this process" if self.local else f"on Beam's {BEAM_RUNNERS[self.name]}"

    def pipeline_args(self) -> list[str]:
        """Beam's options: the given ones, and for ``direct`` multi-process workers, one per
        core, unless given."""
        args = list(self.beam_args)
        given = {a.split("=")[0] for a in args}
        if self.name == "direct":
            if "--direct_num_workers" not in given:
                args.append(f"--direct_num_workers={os.cpu_count() or 1}")
            if "--direct_running_mode" not in given:
                args.append("--direct_running_mode=multi_processing")
        return args

    def download_config(self):
        """The TFDS download config that makes `download_and_prepare` build on this runner."""
        import tensorflow_datasets as tfds

        try:
            from apache_beam.options.pipeline_options import PipelineOptions
        except ImportError:
            raise ImportError(f"--runner={self.name} needs Apache Beam: pip install "
                              "'omniflatten-jax[beam]' (or build with --runner=local)") from None
        return tfds.download.DownloadConfig(
            beam_runner=BEAM_RUNNERS[self.name],
            beam_options=PipelineOptions(self.pipeline_args()))


# A worker's exception reaches the launcher as text inside the runner's own error.
_WORKER_ERROR = re.compile(r"(?:BadInputError|InputFileError): ([^\n]+)")
_STEP_SUFFIX = re.compile(r"(?: \[while running '[^']*'\])+\s*$")


def worker_error(error: BaseException) -> str | None:
    """The message of a BadInputError (a stop on a bad input) raised on a Beam worker, from
    the error the pipeline failed with; None if it failed for another reason."""
    found = _WORKER_ERROR.search(str(error))
    if found is None:
        return None
    return _STEP_SUFFIX.sub("", found.group(1)).strip().strip("\"'")
