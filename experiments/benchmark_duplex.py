"""Per-chunk latency and real-time factor of chunk-synchronous duplex decoding.

    python experiments/benchmark_duplex.py --config=embedded [--checkpoint=CKPT]
    python experiments/benchmark_duplex.py --config=qwen2_0_5b --stage=duplex_3 --chunks=100

Decodes `--chunks` chunks of a user channel (random speech codes: the cost of a chunk does not
depend on what is said) with the decoder the duplex CLI uses, one jitted call per chunk, and
times each call to completion. Without --checkpoint the configuration's model is randomly
initialised (same shapes, same cost). A chunk holds ``speech_chunk`` speech frames, so it
covers ``speech_chunk / frame_rate`` seconds of audio; the real-time factor is the mean chunk
decode time over that (below 1: faster than real time). The decoder is compiled before the
first chunk (reported apart). The context slides as in live use (the stage plan's training
window, `StagePlan.context_chunks`), its prefills included. Parameters are placed once
(``--params``: sharded over the devices, or replicated on each).
"""

from __future__ import annotations

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402  (after the path: run as a script)
from omniflatten_jax.config import PARAM_PLACEMENTS  # noqa: E402  (after the path)
from omniflatten_jax.config.stages import CHUNKED_STAGES  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("config", "embedded", "a named configuration (experiments/configs)")
    flags.DEFINE_string("checkpoint", None, "a checkpoint to decode with (default: random init)")
    flags.DEFINE_enum("stage", "duplex_3", CHUNKED_STAGES, "whose plan (chunk layout, context)")
    flags.DEFINE_integer("chunks", 60, "chunks to decode and time")
    flags.DEFINE_integer("batch", 1, "dialogues decoded together")
    flags.DEFINE_enum("params", "sharded", PARAM_PLACEMENTS, "sharded over the devices, or "
                      "replicated on each")
    flags.DEFINE_multi_string("set", [], "configuration overrides, e.g. --set=model.dtype=float32")


def measure(cfg, stage: str, n_chunks: int, batch: int, checkpoint: str | None,
            params: str = "sharded") -> dict:
    import jax
    import numpy as np

    from omniflatten_jax.inference.duplex import DuplexModel, DuplexSettings, load_duplex
    from omniflatten_jax.inference.session import DuplexSession
    from omniflatten_jax.model import transformer
    from omniflatten_jax.model.placement import PlacedModel
    from omniflatten_jax.stage_plan import plan_stage

    if checkpoint:
        duplex = load_duplex(checkpoint, placement=params, mesh=cfg.mesh, layout=cfg.layout)
    else:
        model = transformer(cfg.model, cfg.layout.vocab_size)
        placed = PlacedModel.create(model, model.init(jax.random.key(0)), cfg.mesh, params)
        duplex = DuplexModel(placed, cfg.layout, DuplexSettings.of_plan(plan_stage(cfg, stage)))
    placed, model, chunk = duplex.placed, duplex.placed.model, duplex.chunk
    decoder = DuplexSession(duplex, batch)
    compile_s = decoder.compile()
    decoder.start(range(batch))
    rng = np.random.default_rng(0)
    width = chunk.streams[0][1]
    for _ in range(n_chunks):
        decoder.step(cfg.layout.speech_ids(
            rng.integers(0, cfg.layout.num_speech_codes, (batch, width))))
    latency = decoder.latency  # summarised online (percentiles within 0.25%)
    chunk_ms = 1000 * width / cfg.speech.mel.frame_rate
    return {
        "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
        "jax": jax.__version__, "params": model.num_params, "dtype": model.cfg.dtype,
        "placement": placed.placement, "devices": placed.mesh.size,
        "stage": chunk.name, "batch": batch, "chunk_tokens": chunk.chunk_len,
        "chunk_audio_ms": chunk_ms, "compile_s": compile_s,
        "mean_ms": latency.mean_ms, "p50_ms": latency.percentile(50),
        "p95_ms": latency.percentile(95), "max_ms": latency.max_ms,
        "rtf": latency.mean_ms / chunk_ms,
        "tokens_per_s": batch * (chunk.chunk_len - width) / latency.mean_ms * 1000,
        "context_chunks": decoder.context_chunks, "slides": decoder.slides,
    }


def main() -> None:
    from experiments.configs import get_config

    cfg = get_config(FLAGS.config, FLAGS.set)
    if FLAGS.chunks < 1:
        raise ValueError("--chunks must be >= 1")
    r = measure(cfg, FLAGS.stage, FLAGS.chunks, FLAGS.batch, FLAGS.checkpoint, FLAGS.params)
    print(f"{FLAGS.config} ({r['params'] / 1e6:.1f}M params, {r['dtype']}, {r['placement']} "
          f"over {r['devices']} devices) on {r['device']} "
          f"[{r['backend']}, jax {r['jax']}], {r['stage']}, batch {r['batch']}: "
          f"{r['chunk_tokens']} tokens per {r['chunk_audio_ms']:.0f} ms chunk")
    print(f"  compiled in {r['compile_s']:.1f} s beforehand; over {FLAGS.chunks} chunks: mean "
          f"{r['mean_ms']:.2f} ms, p50 {r['p50_ms']:.2f}, p95 {r['p95_ms']:.2f}, max "
          f"{r['max_ms']:.2f}; "
          f"real-time factor {r['rtf']:.3f}; {r['tokens_per_s']:.0f} generated tokens/s")
    print(f"  context {r['context_chunks']} chunks (the training window); the context slid "
          f"{r['slides']} times (a prefill each, inside the timings)")


if __name__ == "__main__":
    cli.run(main, define_flags)
