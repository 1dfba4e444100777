"""One process of a 2-process JAX cluster on 127.0.0.1 (tests/test_multihost_eval.py).

Places a small model's parameters over every device of the cluster (sharded, or replicated)
and runs what evaluation runs: greedy generation, per-stream cross-entropy, live duplex
decoding, and a recording streamed as the FDB harness streams its samples (`fdb.streamer`,
into a folder of this process's own). Prints the results as one JSON line, which must equal
one process's results.

    python -m tests.multihost_eval_worker --process_id=0 --processes=2 --port=PORT [--placement]
"""

from __future__ import annotations

import argparse
import json
import os


def evaluate(placement: str) -> dict:
    import jax
    import numpy as np

    from omniflatten_jax.config import FlattenConfig
    from omniflatten_jax.config.token_layout import TokenLayout
    from omniflatten_jax.evaluation.cross_entropy import stream_cross_entropy
    from omniflatten_jax.inference.duplex import DuplexModel, DuplexSettings
    from omniflatten_jax.inference.generate import greedy_generate
    from omniflatten_jax.inference.session import decode_dialogues
    from omniflatten_jax.model import transformer
    from omniflatten_jax.model.placement import PlacedModel
    from omniflatten_jax.tokens.chunk_layout import chunk_layout
    from omniflatten_jax.tokens.sequence import asr_sequence
    from tests.helpers import SMALL_MODEL

    layout = TokenLayout("bytes", 256, 32)
    model = transformer(SMALL_MODEL, layout.vocab_size)
    # Every process computes the same initial values on its own device, then places them.
    params = jax.device_get(jax.jit(model.init, backend="cpu")(jax.random.key(0)))
    placed = PlacedModel.create(model, params, placement=placement)
    rng = np.random.default_rng(0)
    speech = [layout.speech_ids(rng.integers(0, 32, n)) for n in (7, 12, 5)]
    prompts = [np.concatenate([[layout.special("[ASR]")], s]) for s in speech]
    generated = greedy_generate(placed, prompts, legal=layout.id_mask(text=True),
                                stop_ids=[layout.special("[EOT]")], max_new=6,
                                pad_id=layout.special("<pad>"), batch_size=4)
    examples = [asr_sequence(layout, s, rng.integers(97, 123, 4)) for s in speech]
    ce = stream_cross_entropy(placed, examples, 32, layout.special("<pad>"), batch_size=4)
    flatten = FlattenConfig(speech_chunk=4, text_chunk=2)
    settings = DuplexSettings(chunk_layout("duplex_3", flatten), flatten, context_chunks=3)
    streams = decode_dialogues(DuplexModel(placed, layout, settings), speech, batch_size=4)
    return {"devices": jax.device_count(), "processes": jax.process_count(),
            "fdb_sample": stream_a_sample(placed, layout, settings),
            "embed_devices": len(placed.params["embed"].sharding.device_set),
            "generated": [g.tolist() for g in generated], "cross_entropy": ce,
            "assistant_speech": [s["assistant_speech"].tolist() for s in streams]}


def stream_a_sample(placed, layout, settings) -> dict:
    """A 3 s recording through `fdb.streamer` (the stage's FDB evaluation and the harness):
    digests of the files it writes."""
    import hashlib
    import pathlib
    import tempfile

    import numpy as np
    import soundfile

    from omniflatten_jax.config import MelConfig
    from omniflatten_jax.evaluation.fdb import streamer
    from omniflatten_jax.inference.duplex import DuplexModel
    from omniflatten_jax.speech.kmeans import KMeansMelTokenizer

    rate = 16_000
    t = np.arange(3 * rate) / rate
    wave = (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) * (np.sin(2 * np.pi * 0.7 * t) > 0)
            + 0.01 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)
    tokenizer = KMeansMelTokenizer.fit([wave], MelConfig(), layout.num_speech_codes, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        soundfile.write(folder / "input.wav", wave, rate)
        (folder / "out").mkdir()
        streamer(DuplexModel(placed, layout, settings, tokenizer, stage="duplex_3"))(
            str(folder / "input.wav"), str(folder / "out"))
        output, _ = soundfile.read(folder / "out" / "output.wav")
        return {"output_wav": hashlib.sha256((folder / "out" / "output.wav").read_bytes())
                .hexdigest(), "output_seconds": len(output) / rate,
                "spoken": bool(np.any(output != 0)),
                "events": json.loads((folder / "out" / "events.json").read_text())["events"],
                "text": (folder / "out" / "assistant_text.txt").read_text()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--process_id", type=int, default=0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--devices", type=int, default=2, help="fake CPU devices per process")
    parser.add_argument("--placement", default="sharded")
    args = parser.parse_args()
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_num_cpu_devices", args.devices)
    if args.processes > 1:
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}",
                                   num_processes=args.processes, process_id=args.process_id)
    print(json.dumps(evaluate(args.placement)), flush=True)


if __name__ == "__main__":
    main()
