"""The commands room's one way in: every command parses, starts and fails the same way.

Every entry point of the project is a script in this folder (`experiments.commands` lists them,
the README's "Commands" table too), run as ``python experiments/NAME.py --flag=value``:

* `run(main, define_flags)` defines the command's flags (absl, never on import), parses the
  command line, and runs ``main()`` under the one error policy;
* `define_experiment_flags` (``--config --workdir --data --curriculum --set`` and joining a
  cluster) and `define_policy_flags` are the shared flag groups: the prepare step, training,
  sample writing and the benchmarks resolve the same configuration from the same command line,
  and every decoding command overrides the stored policy the same way;
* the error policy (`one_line_errors`): a failure ends the command with one line,
  ``error: ...``, and exit status 1. The library's errors for bad input (a path, a file's
  contents, a setting) are `ValueError`s or `OSError`s whose messages name the input and the
  fix: they print as they are (`EXPECTED`). Anything else is an error nobody foresaw: its type
  is printed with it, and its traceback is written to ``WORKDIR/logs/`` where the command has a
  workdir, or printed with ``--verbose``, which is what a bug report needs.

No library or data module imports this package: it is the top of the house.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator

from absl import app, flags
from absl import logging as absl_logging

from omniflatten_jax.config.stages import CURRICULA

FLAGS = flags.FLAGS
LOGGERS = ("omniflatten_jax", "data_pipelines", "experiments", "__main__")

# What the library raises for bad input: `AudioError`, `NonFiniteError`, `LayoutMismatchError`,
# `ConfigError`, the checkpoint and host errors are `ValueError`s; disk and permission
# problems are `OSError`s; a missing optional package is an `ImportError` naming the extra to
# install. Every command reports them alike.
EXPECTED = (ValueError, OSError, ImportError)
INTERRUPTED = 130  # 128 + SIGINT, the shell's status for a command stopped by Ctrl-C


def run(main: Callable[..., None], define_flags: Callable[[], None] | None = None, *,
        traceback_folder: Callable[[], str | None] = lambda: None,
        passes_on: str = "") -> None:
    """A command's ``__main__``: its flags defined, the command line parsed, ``main()`` run
    under `one_line_errors` (its unexpected tracebacks written under `traceback_folder()`,
    once the flags are parsed, where it names one). A command that `passes_on` arguments
    after ``--`` to another program (what they are, for the usage error) gets them as
    ``main(rest)``; any other refuses them."""
    flags.DEFINE_bool("verbose", False, "on an error, print the whole traceback, not only "
                      "its message")
    if define_flags is not None:
        define_flags()

    def entry(argv):
        rest = [a for a in argv[1:] if a != "--"]
        if rest and not passes_on:
            raise app.UsageError(f"unexpected arguments: {rest} (flags are --name=value)")
        absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax/TFDS per-file INFO lines
        folder = traceback_folder()
        with one_line_errors(FLAGS.verbose, save_traceback=folder and traceback_file(folder)):
            main(rest) if passes_on else main()

    app.run(entry)


def one_line(error: BaseException) -> str:
    """The message on one line (some libraries' messages span several)."""
    return " ".join(str(error).split()) or type(error).__name__


@contextlib.contextmanager
def one_line_errors(verbose: bool, expected: tuple[type[BaseException], ...] = EXPECTED,
                    save_traceback: Callable[[str], str | None] | None = None
                    ) -> Iterator[None]:
    """Turns an exception inside into ``error: <one line>`` on stderr and exit status 1.

    `expected` errors print their message only; any other prints its type too and where its
    traceback went (`save_traceback`, given the text, returns the file it wrote, or None).
    With `verbose` the traceback is printed as well."""
    try:
        yield
    except SystemExit:
        raise
    except KeyboardInterrupt as e:  # Ctrl-C: said once (training said where it stops first)
        if verbose:
            sys.stderr.write(traceback.format_exc())
        print(f"stopped by Ctrl-C{': ' + one_line(e) if str(e) else ''}", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except Exception as e:  # noqa: BLE001  every failure ends in the one line
        text = traceback.format_exc()
        if verbose:
            sys.stderr.write(text)
        line = f"error: {one_line(e)}"
        if not isinstance(e, expected):
            line = f"error: {type(e).__name__}: {one_line(e)}"
            saved = save_traceback(text) if save_traceback else None
            if not verbose:
                line += (f" (traceback: {saved}; --verbose prints it)" if saved
                         else " (an unexpected error: rerun with --verbose for the traceback)")
        print(line, file=sys.stderr)
        sys.exit(1)


def traceback_file(folder: str) -> Callable[[str], str | None]:
    """A `save_traceback` writing ``FOLDER/error-TIME-PID.txt`` (None when it cannot)."""
    def save(text: str) -> str | None:
        from etils import epath

        from omniflatten_jax.distributed import paths

        path = paths.join(folder, time.strftime("error-%Y%m%d-%H%M%S") + f"-{os.getpid()}.txt")
        try:
            epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
            epath.Path(path).write_text(text)
        except OSError:
            return None
        return path
    return save


def workdir_logs() -> str:
    """``WORKDIR/logs``: where the experiment commands keep unexpected tracebacks (a run on a
    pod leaves them behind)."""
    from omniflatten_jax.distributed import paths

    return paths.join(paths.absolute(FLAGS.workdir), "logs")


def define_experiment_flags() -> None:
    """The configuration and cluster flags shared by every command that reads an experiment
    (its tracebacks go to ``WORKDIR/logs``: `workdir_logs`)."""
    from omniflatten_jax.distributed.hosts import JOIN_TIMEOUT_S

    flags.DEFINE_string("config", "embedded", "a named configuration (experiments/configs)")
    flags.DEFINE_string("workdir", "./workdir", "where data, checkpoints and metrics go: a "
                        "local folder or a gs:// bucket (on a pod: storage every host shares)")
    flags.DEFINE_string("data", None, "embedded | librispeech:DIR | manifest:FILE.jsonl")
    flags.DEFINE_enum("curriculum", None, tuple(CURRICULA), "; ".join(
        f"{name}: {', '.join(stages)}" for name, stages in CURRICULA.items()))
    flags.DEFINE_multi_string("set", [], "configuration overrides, e.g. "
                              "--set=train.batch_size=16")
    flags.DEFINE_bool("distributed", False, "join a multi-host JAX cluster first (every host "
                      "runs the same command); addresses are auto-detected on TPU VMs, SLURM, "
                      "Open MPI and Kubernetes unless given below")
    flags.DEFINE_string("coordinator_address", None, "with --distributed: HOST:PORT of "
                        "process 0's coordinator")
    flags.DEFINE_integer("num_processes", None, "with --distributed: processes in the cluster")
    flags.DEFINE_integer("process_id", None, "with --distributed: this process's index")
    flags.DEFINE_float("cluster_timeout_s", JOIN_TIMEOUT_S, "with --distributed: how long to "
                       "wait for the coordinator to answer and every process to join")


def config_overrides() -> list[str]:
    """The overrides the shared flags stand for, before ``--set`` (which comes last)."""
    overrides = []
    if FLAGS.data:
        overrides.append(f"data.source={FLAGS.data}")
    if FLAGS.curriculum:
        overrides.append(f"curriculum={FLAGS.curriculum}")
    return overrides


def build_config(extra: list[str] = ()):
    """The resolved configuration; on a cluster, hosts compare it setting by setting before
    any work (a collective: every host calls it at the same point)."""
    from experiments.configs import get_config
    from omniflatten_jax.config import to_dict
    from omniflatten_jax.distributed import hosts

    cfg = get_config(FLAGS.config, config_overrides() + list(extra) + list(FLAGS.set))
    hosts.agree_on_settings(_flat(to_dict(cfg)))
    return cfg


def _flat(tree: dict, prefix: str = "") -> dict[str, str]:
    """{"train.seed": "0", ...}: a nested config dict's leaves by dotted name, as JSON."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = json.dumps(value)
    return flat


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

        hosts.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                         FLAGS.cluster_timeout_s)
    elif any(v is not None for v in (FLAGS.coordinator_address, FLAGS.num_processes,
                                     FLAGS.process_id)):
        raise ValueError("--coordinator_address, --num_processes and --process_id need "
                         "--distributed")
    level = logging.INFO if jax.process_index() == 0 else logging.WARNING
    for name in LOGGERS:
        logging.getLogger(name).setLevel(level)


def define_policy_flags() -> None:
    """``--decoding FIELD=VALUE`` (repeatable) and the shorthands ``--temperature --top_k
    --seed``: every decoding command changes the checkpoint's stored policy the same way."""
    import dataclasses

    from omniflatten_jax.config import DecodingPolicy

    fields = ", ".join(f.name for f in dataclasses.fields(DecodingPolicy))
    flags.DEFINE_multi_string("decoding", [], "change one field of the checkpoint's stored "
                              f"decoding policy, FIELD=VALUE (repeatable); fields: {fields}")
    flags.DEFINE_float("temperature", None, "both streams' temperature (0 = greedy content)")
    flags.DEFINE_integer("top_k", None, "both streams' top-k (0 = all)")
    flags.DEFINE_integer("seed", None, "the sampling seed")


def policy_from_flags(stored):
    """`stored` (a `DecodingPolicy`) with the fields the policy flags name changed (a bad
    field or value is an error that names it)."""
    from omniflatten_jax.inference.policy import override_policy

    return override_policy(stored, FLAGS.decoding, temperature=FLAGS.temperature,
                           top_k=FLAGS.top_k, seed=FLAGS.seed)
