"""Per-chunk latency and real-time factor of chunk-synchronous duplex decoding.

    python experiments/benchmark_duplex.py --config=embedded [--checkpoint=CKPT]
    python experiments/benchmark_duplex.py --config=qwen2_0_5b --stage=duplex_3 --chunks=100

Decodes `--chunks` chunks of a user channel (random speech codes: the cost of a chunk does not
depend on what is said) with the decoder the duplex CLI uses, one jitted call per chunk, and
times each call to completion. Without --checkpoint the configuration's model is randomly
initialised (same shapes, same cost). A chunk holds ``speech_chunk`` speech frames, so it
covers ``speech_chunk / frame_rate`` seconds of audio; the real-time factor is the mean chunk
decode time over that (below 1: faster than real time). The decoder is compiled before the
first chunk (reported apart). The context slides as in live use (the training window,
``dialogue_train.seq_len // chunk_len`` chunks), its prefills included.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_string("config", "embedded", "a named configuration (experiments/configs)")
flags.DEFINE_string("checkpoint", None, "a checkpoint to decode with (default: random init)")
flags.DEFINE_enum("stage", "duplex_3", ("duplex_4", "duplex_3", "duplex_2"), "chunk layout")
flags.DEFINE_integer("chunks", 60, "chunks to decode and time")
flags.DEFINE_integer("batch", 1, "dialogues decoded together")
flags.DEFINE_multi_string("set", [], "configuration overrides, e.g. --set=model.dtype=float32")
FLAGS = flags.FLAGS


def measure(cfg, stage: str, n_chunks: int, batch: int, checkpoint: str | None) -> dict:
    import jax
    import numpy as np

    from omniflatten_jax.checkpoint import load_params
    from omniflatten_jax.flatten import chunk_layout
    from omniflatten_jax.inference.duplex import DuplexDecoder, training_window
    from omniflatten_jax.model import transformer

    if checkpoint:
        params, meta, _ = load_params(checkpoint, layout=cfg.layout)
        model_cfg = meta.model
    else:
        model_cfg = cfg.model
        params = transformer(model_cfg, cfg.layout.vocab_size).init(jax.random.key(0))
    model = transformer(model_cfg, cfg.layout.vocab_size)
    chunk = chunk_layout(stage, cfg.flatten)
    decoder = DuplexDecoder(model, params, cfg.layout, chunk, cfg.flatten, batch=batch,
                            context_chunks=training_window(cfg.dialogue_train.seq_len, chunk))
    compile_s = decoder.compile()
    rng = np.random.default_rng(0)
    width = chunk.streams[0][1]
    for _ in range(n_chunks):
        decoder.step(cfg.layout.speech_ids(
            rng.integers(0, cfg.layout.num_speech_codes, (batch, width))))
    ms = np.asarray(decoder.chunk_ms)
    chunk_ms = 1000 * width / cfg.speech.frame_rate
    return {
        "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
        "jax": jax.__version__, "params": model.num_params, "dtype": model_cfg.dtype,
        "stage": stage, "batch": batch, "chunk_tokens": chunk.chunk_len,
        "chunk_audio_ms": chunk_ms, "compile_s": compile_s,
        "mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)), "max_ms": float(ms.max()),
        "rtf": float(ms.mean() / chunk_ms),
        "tokens_per_s": float(batch * (chunk.chunk_len - width) / ms.mean() * 1000),
        "context_chunks": decoder.context_chunks, "slides": decoder.slides,
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from experiments.configs import get_config

    cfg = get_config(FLAGS.config, FLAGS.set)
    if FLAGS.chunks < 1:
        raise app.UsageError("--chunks must be >= 1")
    r = measure(cfg, FLAGS.stage, FLAGS.chunks, FLAGS.batch, FLAGS.checkpoint)
    print(f"{FLAGS.config} ({r['params'] / 1e6:.1f}M params, {r['dtype']}) on {r['device']} "
          f"[{r['backend']}, jax {r['jax']}], {r['stage']}, batch {r['batch']}: "
          f"{r['chunk_tokens']} tokens per {r['chunk_audio_ms']:.0f} ms chunk")
    print(f"  compiled in {r['compile_s']:.1f} s beforehand; over {FLAGS.chunks} chunks: mean "
          f"{r['mean_ms']:.2f} ms, p50 {r['p50_ms']:.2f}, p95 {r['p95_ms']:.2f}, max "
          f"{r['max_ms']:.2f}; "
          f"real-time factor {r['rtf']:.3f}; {r['tokens_per_s']:.0f} generated tokens/s")
    print(f"  context {r['context_chunks']} chunks (the training window); the context slid "
          f"{r['slides']} times (a prefill each, inside the timings)")


if __name__ == "__main__":
    app.run(main)
