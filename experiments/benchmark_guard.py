"""The numerics guard's cost: the train step with and without it, same model, batch and state.

    python experiments/benchmark_guard.py [--config=embedded] [--steps=20]

Times the two jitted steps alternately (so load on the machine affects both alike) and prints
the median step time of each and their ratio.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402  (after the path: run as a script)

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("config", "embedded", "a named configuration (experiments/configs)")
    flags.DEFINE_integer("steps", 20, "timed steps of each, after one compiling step")


def main() -> None:
    from omniflatten_jax.distributed import sharding

    with sharding.on_one_device():  # the steps are traced on the first device
        measure()


def measure() -> None:
    import jax
    import numpy as np

    from experiments.configs import get_config
    from omniflatten_jax.model import transformer
    from omniflatten_jax.training.guard import init_guard
    from omniflatten_jax.training.optimizer import make_optimizer
    from omniflatten_jax.training.step import guarded_train_step, train_step

    cfg = get_config(FLAGS.config)
    b, t = cfg.train.batch_size, cfg.train.seq_len
    model = transformer(cfg.model, cfg.layout.vocab_size)
    tx = make_optimizer(cfg.optimizer, 1000)
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, cfg.layout.vocab_size, (b, t)).astype(np.int32),
             "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
             "segment_ids": np.ones((b, t), np.int32), "loss_mask": np.ones((b, t), bool),
             "streams": np.ones((b, t), np.int32)}
    plain = jax.jit(functools.partial(train_step, model, tx))
    guarded = jax.jit(functools.partial(guarded_train_step, model, tx, "stop",
                                        divergence_factor=cfg.train.divergence_factor))
    params = model.init(jax.random.key(0))
    state = {"plain": (params, tx.init(params)),
             "guarded": (params, tx.init(params), init_guard(0))}

    def run(name):
        start = time.perf_counter()
        if name == "plain":
            p, o, m = plain(*state["plain"], batch)
            state["plain"] = (p, o)
        else:
            p, o, g, m = guarded(*state["guarded"], batch)
            state["guarded"] = (p, o, g)
        jax.block_until_ready(m["loss"])
        return time.perf_counter() - start

    run("plain"), run("guarded")  # compile
    times = {"plain": [], "guarded": []}
    for _ in range(FLAGS.steps):
        for name in times:
            times[name].append(run(name))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{cfg.name}: batch {b} x {t}, {model.num_params:,} parameters, "
          f"{jax.devices()[0].device_kind}")
    print(f"  step without guard {1e3 * med['plain']:.1f} ms, with guard "
          f"{1e3 * med['guarded']:.1f} ms: ratio {med['guarded'] / med['plain']:.3f}")


if __name__ == "__main__":
    cli.run(main, define_flags)
