"""The live server (`omniflatten_jax.serving`) with real sockets: conversations on slots that
never leak into each other, slots freed on hang-up, and every refusal named."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from omniflatten_jax.config import ServeConfig
from omniflatten_jax.inference.duplex import load_duplex
from omniflatten_jax.inference.live import LiveSession
from omniflatten_jax.serving.app import make_app
from omniflatten_jax.serving.engine import Engine
from omniflatten_jax.serving.protocol import float_to_pcm
from omniflatten_jax.speech.audio import resample
from tests.test_duplex_cli import stage_dir  # noqa: F401  (the shared fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELLO = {"type": "hello", "protocol": 1, "sample_rate": 16000}
TIMINGS = ("time", "step_ms", "busy_ms")  # wall-clock fields: the rest must repeat exactly


@pytest.fixture(scope="module")
def voices():
    """Two callers' recordings at 16 kHz, each 4 chunks (1.6 s) long."""
    from data_pipelines.synth.espeak import Synthesizer, Voice

    synth = Synthesizer()
    waves = [resample(u.audio, u.sample_rate, 16_000).astype(np.float32) for u in
             (synth.speak("hello there how are you", Voice("en+m3")),
              synth.speak("could you tell me the time", Voice("en+f3")))]
    return [np.pad(w, (0, 4 * 6400 - len(w))) for w in waves]


@pytest.fixture(scope="module")
def live(stage_dir):  # noqa: F811
    session = LiveSession(load_duplex(str(stage_dir / "checkpoints")), rows=2)
    session.compile()
    return session


def serve(live, **settings):
    """The app on a free loopback port, run in the test's event loop."""
    cfg = ServeConfig(port=1, **{"buffer_seconds": 4.0, **settings})
    engine = Engine(live, cfg)
    return engine, make_app(engine)


async def started(app):
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"127.0.0.1:{port}"


async def talk(http, address, wave, seed, *, chunks=None, hang_up_after=None):
    """One conversation: the whole recording sent at once (within the buffer bound, so the
    chunk clock never pads it), then every server message until the server closes."""
    got = []
    async with http.ws_connect(f"ws://{address}/ws") as ws:
        await ws.send_str(json.dumps({**HELLO, "seed": seed}))
        ready = json.loads((await ws.receive()).data)
        assert ready["type"] == "ready", ready
        pcm = float_to_pcm(wave)
        for i in range(0, len(pcm), 12_800):
            await ws.send_bytes(pcm[i:i + 12_800])
        n = -(-len(wave) // ready["chunk_samples"])
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                got.append(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                m = json.loads(msg.data)
                if m["type"] == "chunk":
                    got.append({k: v for k, v in m.items() if k not in TIMINGS})
                    if hang_up_after is not None and m["index"] + 1 == hang_up_after:
                        return got  # leaves without a word: the socket just closes
                    if m["index"] + 1 == (chunks or n):
                        await ws.send_str(json.dumps({"type": "end"}))
    return got


def test_two_conversations_at_once_get_what_each_gets_alone(live, voices):
    async def scenario():
        engine, app = serve(live)
        runner, address = await started(app)
        async with aiohttp.ClientSession() as http:
            alone = [await talk(http, address, voices[0], 1),
                     await talk(http, address, voices[1], 2)]
            together = await asyncio.gather(talk(http, address, voices[0], 1),
                                            talk(http, address, voices[1], 2))
            metrics = await (await http.get(f"http://{address}/metrics")).text()
        await runner.cleanup()
        return alone, together, metrics

    alone, together, metrics = asyncio.run(scenario())
    for a, b in zip(alone, together):
        assert a == b  # every chunk message and every byte of audio
        audio = [x for x in a if isinstance(x, bytes)]
        assert len(audio) == 4 and all(len(x) == 2 * 6400 for x in audio)
    assert alone[0] != alone[1]
    assert "omniflatten_conversations_total 4" in metrics
    assert "omniflatten_chunks_late_total 0" in metrics
    assert 'omniflatten_step_seconds_bucket{le="+Inf"}' in metrics


def test_a_slot_freed_by_a_caller_who_left_goes_to_the_next(live, voices):
    async def scenario():
        engine, app = serve(live)
        runner, address = await started(app)
        async with aiohttp.ClientSession() as http:
            first = asyncio.create_task(talk(http, address, voices[0], 1, hang_up_after=2))
            second = asyncio.create_task(talk(http, address, voices[1], 2))
            while engine.metrics.slots_in_use < 2:  # both callers seated, however loaded
                await asyncio.sleep(0.05)
            async with http.ws_connect(f"ws://{address}/ws") as ws:  # a third: no slot
                await ws.send_str(json.dumps(HELLO))
                refused = json.loads((await ws.receive()).data)
                await ws.receive()
                busy = ws.close_code
            await first
            while engine.metrics.slots_in_use > 1:  # the clock frees the row between steps
                await asyncio.sleep(0.05)
            third = await talk(http, address, voices[0], 1)
            await second
        await runner.cleanup()
        return refused, busy, third, engine.metrics

    refused, busy, third, metrics = asyncio.run(scenario())
    assert refused["type"] == "refused" and "all 2 conversations" in refused["reason"]
    assert busy == 1013
    assert sum(isinstance(x, bytes) for x in third) == 4  # the whole call, on the freed slot
    assert metrics.refused["busy"] == 1 and metrics.closed["hang_up"] == 3


async def exchange(address, *messages, headers=None, path="/ws"):
    """Opens a socket, sends `messages` (dicts as JSON, str raw, bytes binary), returns the
    server's text messages and the close code and reason."""
    texts = []
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"ws://{address}{path}", headers=headers) as ws:
            for m in messages:
                if isinstance(m, bytes):
                    await ws.send_bytes(m)
                else:
                    await ws.send_str(json.dumps(m) if isinstance(m, dict) else m)
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    texts.append(json.loads(msg.data))
            return texts, ws.close_code


def test_refusals_close_one_conversation_with_a_reason(live, voices):
    async def scenario():
        engine, app = serve(live, token="s3cret", max_message_bytes=2048)
        runner, address = await started(app)
        auth = {"Authorization": "Bearer s3cret"}
        results = {}
        async with aiohttp.ClientSession() as http:
            # A good caller talks throughout; the bad ones must not disturb it.
            good = asyncio.create_task(exchange(
                address, HELLO, *[float_to_pcm(voices[0][i:i + 640])
                                  for i in range(0, 6400 * 3, 640)], headers=auth))
            results["malformed"] = await exchange(address, HELLO, "{not json", headers=auth)
            results["unknown"] = await exchange(address, HELLO, {"type": "dance"}, headers=auth)
            results["oversized"] = await exchange(address, HELLO, b"\0" * 4000, headers=auth)
            results["odd"] = await exchange(address, HELLO, b"\0" * 3, headers=auth)
            results["version"] = await exchange(address, {**HELLO, "protocol": 2},
                                                headers=auth)
            results["audio_first"] = await exchange(address, b"\0\0", headers=auth)
            for name, headers in (("no_token", {}),
                                  ("wrong_token", {"Authorization": "Bearer nope"}),
                                  ("origin", {**auth, "Origin": "https://evil.example"})):
                resp = await http.get(f"http://{address}/ws", headers=headers)
                results[name] = (resp.status, await resp.text())
            resp = await http.get(f"http://{address}/metrics")
            results["metrics_no_token"] = resp.status
            # The chunk clock's pace depends on the machine's load: wait for the steps, bounded.
            deadline = time.monotonic() + 60
            while engine.metrics.chunks < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            async with http.ws_connect(f"ws://{address}/ws", headers=auth) as ws:
                await ws.send_str(json.dumps({"type": "end"}))
            good.cancel()
            chunks = engine.metrics.chunks
        await runner.cleanup()
        return results, chunks

    results, chunks = asyncio.run(scenario())
    codes = {name: results[name][1] for name in
             ("malformed", "unknown", "oversized", "odd", "version", "audio_first")}
    assert codes == {"malformed": 1007, "unknown": 1003, "oversized": 1009, "odd": 1007,
                     "version": 1008, "audio_first": 1008}
    assert "must be JSON" in results["malformed"][0][-1]["reason"]
    assert "4000 bytes is over the limit of 2048" in results["oversized"][0][-1]["reason"]
    assert "speaks protocol 1" in results["version"][0][-1]["reason"]
    assert results["no_token"][0] == 401 and results["wrong_token"][0] == 401
    assert results["origin"][0] == 403 and "evil.example" in results["origin"][1]
    assert results["metrics_no_token"] == 401
    assert chunks >= 3  # the good caller was stepped all along


def test_late_audio_is_padded_and_told_and_too_fast_is_refused(live, voices):
    async def scenario():
        engine, app = serve(live, buffer_seconds=1.0)
        runner, address = await started(app)
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://{address}/ws") as ws:
                await ws.send_str(json.dumps(HELLO))
                await ws.receive()
                await ws.send_bytes(float_to_pcm(voices[0][:6400 + 3200]))  # 1.5 chunks
                late = None
                while late is None:
                    m = (await ws.receive()).data
                    if isinstance(m, str) and json.loads(m)["type"] == "late":
                        late = json.loads(m)
                await ws.send_str(json.dumps({"type": "end"}))
            fast = await exchange(address, HELLO, *[float_to_pcm(np.zeros(16_000))] * 2)
        await runner.cleanup()
        return late, fast

    late, (texts, code) = asyncio.run(scenario())
    assert late["index"] == 1 and late["chunks"] == 1
    assert code == 1008 and "faster than real time" in texts[-1]["reason"]


def test_a_conversation_ends_at_the_servers_limit(live, voices):
    async def scenario():
        engine, app = serve(live, max_seconds=0.8)
        runner, address = await started(app)
        texts, code = await exchange(address, HELLO, float_to_pcm(voices[0]))
        await runner.cleanup()
        return texts, code, engine.metrics

    texts, code, metrics = asyncio.run(scenario())
    assert [t["index"] for t in texts if t["type"] == "chunk"] == [0, 1]
    assert code == 1000 and "limit of 0.8 s" in texts[-1]["reason"]
    assert metrics.closed["limit"] == 1 and metrics.slots_in_use == 0


def test_a_caller_who_never_talks_gives_its_slot_back(live, monkeypatch):
    from omniflatten_jax.serving import engine as engine_module

    monkeypatch.setattr(engine_module, "FIRST_AUDIO_S", 0.5)

    async def scenario():
        engine, app = serve(live)
        runner, address = await started(app)
        texts, code = await exchange(address, HELLO, float_to_pcm(np.zeros(3200)))
        await runner.cleanup()
        return texts, code, engine.metrics

    texts, code, metrics = asyncio.run(scenario())
    assert code == 1008 and "no whole chunk of audio within 0.5 s" in texts[-1]["reason"]
    assert metrics.slots_in_use == 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_command_closes_every_conversation_on_sigterm(stage_dir):  # noqa: F811
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "experiments/serve.py", f"--checkpoint={stage_dir / 'checkpoints'}",
         f"--port={port}", "--sessions=1"], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)

    async def scenario():
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                try:
                    async with http.ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
                        await ws.send_str(json.dumps(HELLO))
                        assert json.loads((await ws.receive()).data)["type"] == "ready"
                        await ws.send_bytes(float_to_pcm(np.zeros(6400)))
                        await ws.receive()  # the first chunk: the conversation is on
                        proc.send_signal(signal.SIGTERM)
                        texts = [json.loads(m.data) async for m in ws
                                 if m.type == aiohttp.WSMsgType.TEXT]
                        return texts, ws.close_code
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.2)
        raise AssertionError("the server never opened its port")

    try:
        texts, code = asyncio.run(scenario())
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert code == 1001 and texts[-1] == {"type": "end",
                                         "reason": "shutdown: the server is stopping"}
    assert proc.returncode == 0, out
    assert "every conversation was closed" in out
    started_at = time.time()
    assert started_at  # the port is free again: a new server could take it
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_the_command_serves_https_and_wss_with_a_certificate(stage_dir, tmp_path):  # noqa: F811
    import shutil

    if not shutil.which("openssl"):
        pytest.skip("needs openssl to make a certificate")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "experiments/serve.py", f"--checkpoint={stage_dir / 'checkpoints'}",
         f"--port={port}", "--sessions=1", "--token=abc", f"--tls_cert={tmp_path / 'cert.pem'}",
         f"--tls_key={tmp_path / 'key.pem'}"], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)

    async def scenario():
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                try:
                    page = await http.get(f"https://127.0.0.1:{port}/", ssl=False)
                    break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.2)
            async with http.ws_connect(f"wss://127.0.0.1:{port}/ws?token=abc", ssl=False) as ws:
                await ws.send_str(json.dumps(HELLO))
                ready = json.loads((await ws.receive()).data)
                await ws.send_bytes(float_to_pcm(np.zeros(6400)))
                chunk = json.loads((await ws.receive()).data)
            return page.status, ready["type"], chunk["type"]

    try:
        assert asyncio.run(scenario()) == (200, "ready", "chunk")
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
    assert f"serving https://127.0.0.1:{port}/?token=..." in out


def test_barge_in_and_latency_messages_follow_who_speaks(live):
    """The engine's rules on made-up replies: the model stops while the user talks ->
    barge_in; the user stops, then the model's first audio -> one latency message."""
    from omniflatten_jax.inference.live import Reply
    from omniflatten_jax.serving.conversation import Chunk

    engine, _ = serve(live)
    conversation = engine.admit(seed=None)
    silent = np.full(10, live.silent, np.int32)
    speech = np.full(10, live.layout.speech_offset, np.int32)
    # A voice at -20 dBFS throughout (the live flags count any frame louder than -30).
    talk = 0.1 * np.random.default_rng(0).standard_normal(6400).astype(np.float32)
    quiet = np.zeros(6400, np.float32)
    stops = np.concatenate([talk[:3200], quiet[:3200]])  # the user stops mid-chunk

    def step(user_audio, speaking, audio, at):
        reply = Reply(audio, "", speaking, silent, speech if speaking else silent)
        conversation.chunks += 1
        engine._deliver(conversation, Chunk(user_audio, False, at), reply, tick=at,
                        sent=at + 0.05, step_seconds=0.05)
        out = []
        while not conversation.outbox.empty():
            item = conversation.outbox.get_nowait()
            if isinstance(item, str):
                out.append(json.loads(item)["type"])
                if out[-1] == "latency":
                    latency.append(json.loads(item))
        return out

    latency = []

    loud = np.full(6400, 0.1, np.float32)
    assert step(talk, True, loud, 0.0) == ["chunk"]  # both talk
    assert step(talk, False, quiet, 0.4) == ["barge_in", "chunk"]  # it yields to the user
    assert step(stops, False, quiet, 0.8) == ["chunk"]
    assert step(quiet, True, loud, 1.2) == ["latency", "chunk"]  # it takes its turn
    assert step(quiet, True, loud, 1.6) == ["chunk"]  # once
    # The user went quiet at 0.8 - 0.2 s (half the chunk before its end); the audio was sent
    # at 1.25 s with sound from its first sample: 650 ms. The server's part: a chunk, the
    # 50 ms step and the decoder's 32 ms.
    assert latency == [{"type": "latency", "index": 3, "turn_ms": 650, "first_audio_ms": 482,
                        "clock_wait_ms": 0}]
