"""Timing the trainer's own step on one device, on packed rows (the benchmarks share it)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np


def packed_rows(vocab: int, batch: int, seq_len: int, segments: int, seed: int = 0):
    """Rows of `segments` sequences of (nearly) equal length, every token real."""
    rng = np.random.default_rng(seed)
    bounds = np.linspace(0, seq_len, segments + 1).astype(int)
    segment_ids = np.zeros((batch, seq_len), np.int32)
    positions = np.zeros((batch, seq_len), np.int32)
    for s, (lo, hi) in enumerate(zip(bounds, bounds[1:]), start=1):
        segment_ids[:, lo:hi] = s
        positions[:, lo:hi] = np.arange(hi - lo)
    return {"tokens": rng.integers(0, vocab, (batch, seq_len)).astype(np.int32),
            "positions": positions, "segment_ids": segment_ids,
            "loss_mask": np.ones((batch, seq_len), bool),
            "streams": np.ones((batch, seq_len), np.int32)}


def time_train_program(cfg, rows, warmup: int, steps: int):
    """The trainer's step (`TrainProgram`) on one device: (seconds per step after `warmup`
    steps, the first step's loss, the initial parameters as numpy)."""
    import jax

    if warmup < 1 or steps < 1:
        raise ValueError(f"need at least 1 warm-up and 1 timed step, got {warmup} and {steps}")

    from omniflatten_jax.config import MeshConfig
    from omniflatten_jax.distributed import sharding
    from omniflatten_jax.training.program import TrainProgram

    batch, seq_len = rows["tokens"].shape
    mesh = sharding.make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    train = dataclasses.replace(cfg.train, batch_size=batch, seq_len=seq_len)
    program = TrainProgram.build(cfg, train, mesh)
    params = program.init_params(0)
    initial = jax.device_get(params)
    opt_state, guard = program.init_opt_state(params), program.init_guard(0)
    device_rows = program.global_batch(rows)
    with sharding.activate(mesh, program.rules):
        params, opt_state, guard, metrics = program.step(params, opt_state, guard, device_rows)
        first = float(metrics["loss"])
        for _ in range(warmup - 1):
            params, opt_state, guard, metrics = program.step(params, opt_state, guard,
                                                             device_rows)
        jax.block_until_ready(params)
        start = time.perf_counter()
        for _ in range(steps):
            params, opt_state, guard, metrics = program.step(params, opt_state, guard,
                                                             device_rows)
        jax.block_until_ready(params)
    return (time.perf_counter() - start) / steps, first, initial
