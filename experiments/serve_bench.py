"""How many conversations the live server holds at real time: a sweep over loopback.

    python experiments/serve_bench.py --checkpoint=CKPT --inputs='DIR/*/input.wav'
        [--conversations=1,2,4,8,12,16] [--seconds=60]
    python experiments/serve_bench.py --config=qwen2_0_5b --speech_tokenizer=FILE ...
        (random weights of that configuration: a step costs the same whatever the weights)

For each count N it starts the server (`omniflatten_jax.serving`, compiled for N slots) on a
free loopback port and opens N WebSocket conversations at once, each streaming held-out
recordings (`--inputs`, cycled) in real time, 40 ms per message, from a random phase of the
chunk clock, for `--seconds`. It prints, per N: the time of each step (the model and the
speech decode of all N conversations: what a reply waits for) p50/p95/p99 against the
chunk, the whole work of a tick (the step and the context slides done after the replies:
what decides lateness), chunks late, and the
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
CHUNK_S = 0.4  # the chunk of every duplex stage: 10 frames at 25 Hz


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
    flags.DEFINE_string("python", sys.executable, "the Python that runs the server")


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
    total = int(seconds * 16_000) // 6400 * 6400  # whole chunks: no padded last one
    audio = np.resize(wave, total)
    got = {"latency": [], "late": 0, "chunks": 0, "ended": None, "steps": []}
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"ws://{address}/ws", max_msg_size=0) as ws:
            await ws.send_str(json.dumps({"type": "hello", "protocol": 1,
                                          "sample_rate": 16_000}))
            ready = json.loads((await ws.receive()).data)
            if ready["type"] != "ready":
                raise RuntimeError(f"the server refused a conversation: {ready}")

            answered = asyncio.Event()  # every chunk sent has its reply: hang up

            async def send():
                start = time.monotonic()
                try:
                    for i in range(0, total, PIECE):
                        await asyncio.sleep(max(0.0, start + i / 16_000 - time.monotonic()))
                        await ws.send_bytes(float_to_pcm(audio[i:i + PIECE]))
                    await answered.wait()
                    await ws.send_str(json.dumps({"type": "end"}))
                except ConnectionError:  # the server ended it: its "end" says why
                    pass

            sender = asyncio.create_task(send())
            async for msg in ws:
                if got["ended"]:
                    sender.cancel()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                m = json.loads(msg.data)
                if m["type"] == "chunk":
                    got["chunks"] += 1
                    got["steps"].append(m)
                    if got["chunks"] * ready["chunk_samples"] >= total:
                        answered.set()
                elif m["type"] == "late":
                    got["late"] += 1
                elif m["type"] == "latency":
                    got["latency"].append(m)
                elif m["type"] == "end":
                    got["ended"] = m["reason"]
            sender.cancel()
    results.append(got)


def start_server(n: int, seconds: float):
    """`experiments/serve.py` for `n` slots on a free loopback port, in its own process (the
    callers here must not share its interpreter); returns the process and its address."""
    import socket
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = ([f"--checkpoint={FLAGS.checkpoint}"] if FLAGS.checkpoint else
             [f"--config={FLAGS.config}", f"--stage={FLAGS.stage}",
              f"--speech_tokenizer={FLAGS.speech_tokenizer}"])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([FLAGS.python, "experiments/serve.py", *model, f"--port={port}",
                             f"--sessions={n}", f"--max_seconds={seconds + 30}",
                             f"--params={FLAGS.params}"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 900
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"127.0.0.1:{port}"
        if proc.poll() is not None:
            raise RuntimeError(f"the server did not start:\n{proc.stdout.read()}")
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not open its port in 15 minutes")


async def level(address: str, n: int, waves, seconds: float, chunk_s: float) -> dict:
    import asyncio
    import random

    import aiohttp

    rng = random.Random(n)
    results: list = []
    await asyncio.gather(*[caller(address, waves[i % len(waves)], seconds,
                                  rng.uniform(0, chunk_s), results) for i in range(n)])
    async with aiohttp.ClientSession() as http:
        metrics = await (await http.get(f"http://{address}/metrics")).text()
    late = next(int(line.split()[-1]) for line in metrics.splitlines()
                if line.startswith("omniflatten_chunks_late_total"))
    chunks = next(int(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith("omniflatten_chunks_total"))
    # Every step reaches every caller with the same step time: one record per (time, step).
    steps = {(round(m["time"], 1), m["step_ms"], m["busy_ms"]) for c in results
             for m in c["steps"]}
    return {"n": n, "steps": [ms / 1000 for _, ms, _ in sorted(steps)],
            "busy": [ms / 1000 for _, _, ms in sorted(steps)], "late": late,
            "chunks": chunks, "callers": results}


def summary(r: dict, chunk_ms: float) -> dict:
    import numpy as np

    steps = 1000 * np.asarray(r["steps"][2:] or r["steps"])  # the first steps warm caches
    lat = [m for c in r["callers"] for m in c["latency"]]

    def pct(values, q):
        return float(np.percentile(values, q)) if len(values) else float("nan")

    first = [m["first_audio_ms"] for m in lat]
    busy = 1000 * np.asarray(r["busy"][3:] or r["busy"])
    return {"n": r["n"], "p50": pct(steps, 50), "p95": pct(steps, 95), "p99": pct(steps, 99),
            "busy95": pct(busy, 95), "busy_max": float(busy.max()) if len(busy) else 0.0,
            "late": r["late"], "chunks": r["chunks"], "budget": chunk_ms / 2,
            "first_audio_p50": pct(first, 50), "first_audio_p95": pct(first, 95),
            "turn_p50": pct([m["turn_ms"] for m in lat], 50),
            "wait_p50": pct([m["clock_wait_ms"] for m in lat], 50), "turns": len(lat)}


def main() -> None:
    import asyncio

    counts = sorted({int(n) for n in FLAGS.conversations})
    if not counts or counts[0] < 1 or FLAGS.seconds <= 0:
        raise ValueError("--conversations must be positive counts and --seconds positive")
    if bool(FLAGS.checkpoint) == bool(FLAGS.config):
        raise ValueError("give --checkpoint or --config (with --speech_tokenizer), not both")
    if FLAGS.config and not FLAGS.speech_tokenizer:
        raise ValueError("--config needs --speech_tokenizer (a random model has none)")
    paths, waves = recordings(FLAGS.inputs)
    print(f"{FLAGS.checkpoint or FLAGS.config + ' (random weights)'}; {len(paths)} recordings "
          f"from {FLAGS.inputs}; {FLAGS.seconds:g} s per count; the server in its own process",
          flush=True)
    print("| conversations | step p50 / p95 / p99 (ms) | p95 within half a chunk "
          "| tick's work with slides p95 / max (ms) | late chunks "
          "| first audio after its turn p50 / p95 (ms) | user stop -> audio p50 (ms) "
          "| clock wait p50 (ms) |", flush=True)
    print("|---|---|---|---|---|---|---|---|", flush=True)
    held = 0
    for n in counts:
        proc, address = start_server(n, FLAGS.seconds)
        try:
            r = asyncio.run(level(address, n, waves, FLAGS.seconds, CHUNK_S))
        finally:
            proc.terminate()
            banner = proc.communicate(timeout=60)[0].splitlines()
        s = summary(r, CHUNK_S * 1e3)
        print(f"| {n} | {s['p50']:.1f} / {s['p95']:.1f} / {s['p99']:.1f} | "
              f"{'yes' if s['p95'] <= s['budget'] else 'no'} | {s['busy95']:.1f} / "
              f"{s['busy_max']:.1f} | {s['late']} of {s['chunks']} | "
              f"{s['first_audio_p50']:.0f} / {s['first_audio_p95']:.0f} ({s['turns']} turns) | "
              f"{s['turn_p50']:.0f} | {s['wait_p50']:.0f} |", flush=True)
        if n == counts[0]:
            print("  server: " + next((line for line in banner if "compiled" in line), ""),
                  flush=True)
        dropped = [c["ended"] for c in r["callers"]
                   if c["ended"] and not c["ended"].startswith("hang_up")]
        if dropped:
            print(f"  the server ended {len(dropped)} of {n} conversations: {dropped[0]}",
                  flush=True)
        if s["late"] or dropped:
            break
        held = n
    print(f"most conversations held with no late chunk: {held} (of those tried: "
          f"{', '.join(map(str, counts))})", flush=True)


if __name__ == "__main__":
    cli.run(main, define_flags)
