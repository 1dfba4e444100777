"""How fast one host makes global batches: what every host of a pod must keep up with.

    python experiments/benchmark_data.py --workdir=./workdir [--config=NAME] [--batch=64]

The data order depends on the seed and the step only, so every host runs the whole Grain
pipeline (read, lay out, pack, batch) for the global batch and keeps its devices' rows. This
times that pipeline over the prepared alignment dataset in the workdir (prepared first if
missing) with 0 and more Grain worker processes, and prints global rows and tokens per
second. Compare the tokens per second with the step's: the pipeline must produce a global
batch faster than the devices consume one.
"""

from __future__ import annotations

import os
import sys
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_integer("batch", None, "global rows per batch (default: the alignment plan's)")
    flags.DEFINE_integer("batches", 40, "timed batches after the first")
    flags.DEFINE_list("workers", ["0", "1"], "Grain worker process counts to time")
    cli.define_experiment_flags()


def main() -> None:
    import numpy as np

    from data_pipelines.builders.speech_text import data_source
    from data_pipelines.pipelines import alignment_pipeline
    from data_pipelines.prepare import prepare_speech_text
    from omniflatten_jax.config.stages import ALIGNMENT
    from omniflatten_jax.stage_plan import plan_stage

    cli.start()
    cfg = cli.build_config()
    plan = plan_stage(cfg, ALIGNMENT)
    batch = FLAGS.batch or plan.train.batch_size
    prepared = prepare_speech_text(cfg, FLAGS.workdir)
    source = data_source(prepared.data_dir, prepared.config_name, "train", cfg.layout)
    print(f"{prepared.config_name}: {len(source)} records, global batch {batch} x "
          f"{plan.train.seq_len} tokens")
    print("workers  rows/s   tokens/s  (real tokens, packed)")
    for workers in map(int, FLAGS.workers):
        it = iter(alignment_pipeline(
            source, layout=cfg.layout, seq_len=plan.train.seq_len, batch_size=batch,
            asr_fraction=cfg.data.asr_fraction, seed=plan.train.seed,
            num_packing_bins=cfg.data.num_packing_bins, num_workers=workers))
        try:
            next(it)  # start-up (worker processes, first reads) is not timed
            start, tokens = time.perf_counter(), 0
            for _ in range(FLAGS.batches):
                tokens += int(np.sum(next(it)["segment_ids"] > 0))
            elapsed = time.perf_counter() - start
        finally:
            if hasattr(it, "close"):
                it.close()
        print(f"{workers:7d}  {FLAGS.batches * batch / elapsed:6.0f}  {tokens / elapsed:9.0f}")


if __name__ == "__main__":
    cli.run(main, define_flags)
