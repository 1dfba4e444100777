"""The command-line settings that `run.py` and `python -m data_pipelines.prepare` share.

One definition of the configuration flags (``--config --data --set ...``) and of joining a
cluster (``--distributed`` and its addresses), so that the prepare step and training resolve
the same configuration from the same command line. The flags are defined by calling
`define_flags` (from a ``__main__``), never on import.
"""

from __future__ import annotations

import logging

from absl import flags
from absl import logging as absl_logging

FLAGS = flags.FLAGS
LOGGERS = ("omniflatten_jax", "data_pipelines", "experiments", "__main__")


def define_flags() -> None:
    flags.DEFINE_string("config", "embedded", "a named configuration (experiments/configs)")
    flags.DEFINE_string("workdir", "./workdir", "where data, checkpoints and metrics go: a "
                        "local folder or a gs:// bucket (on a pod: storage every host shares)")
    flags.DEFINE_string("data", None, "embedded | librispeech:DIR | manifest:FILE.jsonl")
    flags.DEFINE_enum("curriculum", None, ("v1", "v2"), "v1: alignment, half_duplex, "
                      "duplex_4, duplex_3, duplex_2; v2 (the paper's v2) skips duplex_4")
    flags.DEFINE_multi_string("set", [], "configuration overrides, e.g. "
                              "--set=train.batch_size=16")
    flags.DEFINE_bool("distributed", False, "join a multi-host JAX cluster first (every host "
                      "runs the same command); addresses are auto-detected on TPU VMs, SLURM, "
                      "Open MPI and Kubernetes unless given below")
    flags.DEFINE_string("coordinator_address", None, "with --distributed: HOST:PORT of "
                        "process 0's coordinator")
    flags.DEFINE_integer("num_processes", None, "with --distributed: processes in the cluster")
    flags.DEFINE_integer("process_id", None, "with --distributed: this process's index")
    flags.DEFINE_bool("verbose", False, "print the traceback of an error (it is always written "
                      "to WORKDIR/logs/)")


def config_overrides() -> list[str]:
    """The overrides the shared flags stand for, before ``--set`` (which comes last)."""
    overrides = []
    if FLAGS.data:
        overrides.append(f"data.source={FLAGS.data}")
    if FLAGS.curriculum:
        overrides.append(f"curriculum={FLAGS.curriculum}")
    return overrides


def build_config(extra: list[str] = ()):
    from experiments.configs import get_config

    return get_config(FLAGS.config, config_overrides() + list(extra) + list(FLAGS.set))


def start() -> None:
    """Joins the cluster (``--distributed``) and sets up logging: process 0 logs progress,
    the other hosts only their warnings and errors. ``kill -USR1 PID`` prints every thread's
    stack to stderr (where a run seems stuck)."""
    import faulthandler
    import signal

    import jax

    faulthandler.register(signal.SIGUSR1, all_threads=True)

    if FLAGS.distributed:
        from omniflatten_jax.distributed import hosts

        hosts.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif any(v is not None for v in (FLAGS.coordinator_address, FLAGS.num_processes,
                                     FLAGS.process_id)):
        raise flags.ValidationError("--coordinator_address, --num_processes and --process_id "
                                    "need --distributed")
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax/TFDS per-file INFO lines
    level = logging.INFO if jax.process_index() == 0 else logging.WARNING
    for name in LOGGERS:
        logging.getLogger(name).setLevel(level)


def errors_in_one_line(expected: tuple[type[BaseException], ...]):
    """Every error ends the command with one line and exit status 1
    (`omniflatten_jax.command_errors`); the traceback of an unexpected one is written to
    ``WORKDIR/logs/``, so a run on a pod leaves it behind, and ``--verbose`` prints it."""
    from omniflatten_jax import command_errors
    from omniflatten_jax.distributed import paths

    return command_errors.one_line_errors(
        FLAGS.verbose, expected, command_errors.traceback_file(
            paths.join(paths.absolute(FLAGS.workdir), "logs")))
