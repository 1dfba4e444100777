"""How many conversations the live server holds at real time: a sweep over loopback.

    python experiments/serve_bench.py --checkpoint=CKPT --inputs='DIR/*/input.wav'
        [--conversations=1,2,4,8,12,16] [--seconds=60]
    python experiments/serve_bench.py --config=qwen2_0_5b --speech_tokenizer=FILE ...
        (random weights of that configuration: a step costs the same whatever the weights)

For each count N it starts the server (`omniflatten_jax.serving`, compiled for N slots) on a
free loopback port and opens N WebSocket conversations at once, each streaming held-out
recordings (`--inputs`, cycled) in real time, 40 ms per message, from a random phase of the
chunk clock, for `--seconds`. It prints, per N: the time of each step (the model and the
speech decode of all N conversations) p50/p95/p99 against the chunk, chunks late, and the
latencies the server reports (first audio after the model takes its turn; the user's stop to
the first assistant audio; the lockstep clock's wait), then the most conversations held with
no late chunk. Every level is bounded in time; the sweep stops after the first level that
falls behind.
"""

from __future__ import annotations

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402  (after the path: run as a script)

FLAGS = flags.FLAGS
PIECE = 640  # samples per client message: 40 ms, as the page sends


def define_flags() -> None:
    flags.DEFINE_string("checkpoint", None, "a duplex stage's checkpoints folder")
    flags.DEFINE_string("config", None, "instead of --checkpoint: a named configuration, "
                        "randomly initialised (needs --speech_tokenizer)")
    flags.DEFINE_string("stage", "duplex_2", "with --config: the stage whose chunk layout")
    flags.DEFINE_string("speech_tokenizer", None, "with --config: a speech tokenizer file")
    flags.DEFINE_string("inputs", None, "a glob of user recordings (any format)",
                        required=True)
    flags.DEFINE_list("conversations", ["1", "2", "4", "8", "12", "16"], "the counts to try")
    flags.DEFINE_float("seconds", 60.0, "how long each count talks")
    flags.DEFINE_enum("params", "replicated", ["replicated", "sharded"], "weights placement")


def load_model():
    import dataclasses

    from omniflatten_jax.inference.duplex import load_duplex

    if bool(FLAGS.checkpoint) == bool(FLAGS.config):
        raise ValueError("give --checkpoint or --config (with --speech_tokenizer), not both")
    if FLAGS.checkpoint:
        return load_duplex(FLAGS.checkpoint, placement=FLAGS.params)
    if not FLAGS.speech_tokenizer:
        raise ValueError("--config needs --speech_tokenizer (a random model has none)")
    import jax

    from experiments.configs import get_config
    from omniflatten_jax.inference.duplex import DuplexModel, DuplexSettings
    from omniflatten_jax.model import transformer
    from omniflatten_jax.model.placement import PlacedModel
    from omniflatten_jax.speech.tokenizer import load_speech_tokenizer
    from omniflatten_jax.stage_plan import plan_stage

    cfg = get_config(FLAGS.config, [])
    model = transformer(cfg.model, cfg.layout.vocab_size)
    placed = PlacedModel.create(model, model.init(jax.random.key(0)), cfg.mesh, FLAGS.params)
    duplex = DuplexModel(placed, cfg.layout, DuplexSettings.of_plan(plan_stage(cfg, FLAGS.stage)),
                         stage=FLAGS.stage, where=f"{FLAGS.config} (random weights)")
    speech = load_speech_tokenizer(FLAGS.speech_tokenizer)
    if speech.num_codes != cfg.layout.num_speech_codes:
        raise ValueError(f"{FLAGS.speech_tokenizer} has {speech.num_codes} codes; "
                         f"{FLAGS.config} has {cfg.layout.num_speech_codes}")
    return dataclasses.replace(duplex, speech=speech)


def recordings(pattern: str):
    import glob

    from omniflatten_jax.speech.audio import load_audio

    paths = sorted(glob.glob(pattern))
    if not paths:
        raise ValueError(f"--inputs={pattern} matches no file")
    waves = []
    for path in paths[:64]:
        waves.append(load_audio(path, 16_000).astype("float32"))
    return paths[:64], waves


async def caller(address: str, wave, seconds: float, phase: float, results: list) -> None:
    """One conversation in real time: `wave` (cycled) 40 ms per message on a fixed schedule."""
    import asyncio
    import json
    import time

    import aiohttp
    import numpy as np

    from omniflatten_jax.serving.protocol import float_to_pcm

    await asyncio.sleep(phase)
    total = int(seconds * 16_000) // PIECE * PIECE
    audio = np.resize(wave, total)
    got = {"latency": [], "late": 0, "chunks": 0, "ended": None}
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"ws://{address}/ws", max_msg_size=0) as ws:
            await ws.send_str(json.dumps({"type": "hello", "protocol": 1,
                                          "sample_rate": 16_000}))
            ready = json.loads((await ws.receive()).data)
            if ready["type"] != "ready":
                raise RuntimeError(f"the server refused a conversation: {ready}")

            async def send():
                start = time.monotonic()
                for i in range(0, total, PIECE):
                    await asyncio.sleep(max(0.0, start + i / 16_000 - time.monotonic()))
                    await ws.send_bytes(float_to_pcm(audio[i:i + PIECE]))
                await asyncio.sleep(1.0)  # the last chunk's reply
                await ws.send_str(json.dumps({"type": "end"}))

            sender = asyncio.create_task(send())
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                m = json.loads(msg.data)
                if m["type"] == "chunk":
                    got["chunks"] += 1
                elif m["type"] == "late":
                    got["late"] += 1
                elif m["type"] == "latency":
                    got["latency"].append(m)
                elif m["type"] == "end":
                    got["ended"] = m["reason"]
            await sender
    results.append(got)


async def level(live, n: int, waves, seconds: float) -> dict:
    import asyncio
    import random

    from aiohttp import web

    from omniflatten_jax.config import ServeConfig
    from omniflatten_jax.serving.app import make_app
    from omniflatten_jax.serving.engine import Engine

    engine = Engine(live, ServeConfig(sessions=n, max_seconds=seconds + 30))
    runner = web.AppRunner(make_app(engine))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    address = "127.0.0.1:%d" % site._server.sockets[0].getsockname()[1]
    rng = random.Random(n)
    results: list = []
    await asyncio.gather(*[caller(address, waves[i % len(waves)], seconds,
                                  rng.uniform(0, live.chunk_seconds), results)
                           for i in range(n)])
    await runner.cleanup()
    return {"n": n, "steps": engine.step_seconds, "late": engine.metrics.chunks_late,
            "chunks": engine.metrics.chunks, "callers": results}


def summary(r: dict, chunk_ms: float) -> dict:
    import numpy as np

    steps = 1000 * np.asarray(r["steps"][2:] or r["steps"])  # the first steps warm caches
    lat = [m for c in r["callers"] for m in c["latency"]]

    def pct(values, q):
        return float(np.percentile(values, q)) if len(values) else float("nan")

    first = [m["first_audio_ms"] for m in lat]
    return {"n": r["n"], "p50": pct(steps, 50), "p95": pct(steps, 95), "p99": pct(steps, 99),
            "late": r["late"], "chunks": r["chunks"], "budget": chunk_ms / 2,
            "first_audio_p50": pct(first, 50), "first_audio_p95": pct(first, 95),
            "turn_p50": pct([m["turn_ms"] for m in lat], 50),
            "wait_p50": pct([m["clock_wait_ms"] for m in lat], 50), "turns": len(lat)}


def main() -> None:
    import asyncio

    import jax

    from omniflatten_jax.inference.live import LiveSession

    counts = sorted({int(n) for n in FLAGS.conversations})
    if not counts or counts[0] < 1 or FLAGS.seconds <= 0:
        raise ValueError("--conversations must be positive counts and --seconds positive")
    model = load_model()
    paths, waves = recordings(FLAGS.inputs)
    print(f"{model.stage} {model.where} on {jax.devices()[0].device_kind} "
          f"[{jax.default_backend()}, jax {jax.__version__}]; {len(paths)} recordings from "
          f"{FLAGS.inputs}; {FLAGS.seconds:g} s per count", flush=True)
    print("| conversations | step p50 / p95 / p99 (ms) | p95 within half a chunk | late chunks "
          "| first audio after its turn p50 / p95 (ms) | user stop -> audio p50 (ms) "
          "| clock wait p50 (ms) |", flush=True)
    print("|---|---|---|---|---|---|---|", flush=True)
    held = 0
    for n in counts:
        live = LiveSession(model, rows=n)
        live.compile()
        s = summary(asyncio.run(level(live, n, waves, FLAGS.seconds)), live.chunk_seconds * 1e3)
        print(f"| {n} | {s['p50']:.1f} / {s['p95']:.1f} / {s['p99']:.1f} | "
              f"{'yes' if s['p95'] <= s['budget'] else 'no'} | {s['late']} of {s['chunks']} | "
              f"{s['first_audio_p50']:.0f} / {s['first_audio_p95']:.0f} ({s['turns']} turns) | "
              f"{s['turn_p50']:.0f} | {s['wait_p50']:.0f} |", flush=True)
        if s["late"]:
            break
        held = n
    print(f"most conversations held with no late chunk: {held} (of those tried: "
          f"{', '.join(map(str, counts))})", flush=True)


if __name__ == "__main__":
    cli.run(main, define_flags)
