"""Test setup: 8 fake CPU devices (for mesh tests), set before JAX's backend starts, and
absl flags marked parsed (Grain worker processes read them)."""

import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
flags.FLAGS.mark_as_parsed()

SENTENCES = [
    "hello there", "how are you today", "i am fine thank you", "good morning to you",
    "see you soon", "what time is it", "it is getting late", "thank you very much",
    "where do you live", "i live in the city", "do you like music", "yes i love music",
    "what is your name", "my name is robot", "nice to meet you", "the weather is nice",
]


@pytest.fixture(scope="session")
def spoken_corpus(tmp_path_factory):
    """Real synthesised recordings (22.05 kHz wav) and a JSONL manifest naming them."""
    from data_pipelines.synth.espeak import Synthesizer, Voice
    from omniflatten_jax.speech.audio import save_audio

    root = tmp_path_factory.mktemp("corpus")
    synth = Synthesizer()
    rows = []
    for i, text in enumerate(SENTENCES):
        voice = Voice(("en-us", "en+m3", "en+f3")[i % 3], rate=150 + 5 * (i % 5))
        utt = synth.speak(text, voice)
        path = root / f"utt{i:02d}.wav"
        save_audio(path, utt.audio, utt.sample_rate)
        rows.append({"id": f"utt{i:02d}", "audio": path.name, "text": text,
                     "split": "test" if i % 4 == 3 else "train"})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, manifest, rows


@pytest.fixture(scope="session")
def messy_manifest(spoken_corpus, tmp_path_factory):
    """The spoken corpus plus one utterance of every kind of bad input."""
    import shutil

    import numpy as np
    import soundfile

    root, manifest, rows = spoken_corpus
    folder = tmp_path_factory.mktemp("messy")
    for r in rows:
        shutil.copy(root / r["audio"], folder / r["audio"])
    (folder / "corrupt.wav").write_bytes(b"RIFF0000WAVEnot really")
    soundfile.write(folder / "empty.wav", np.zeros(0), 16_000)
    bad = [{"id": "corrupt", "audio": "corrupt.wav", "text": "anything", "split": "train"},
           {"id": "empty", "audio": "empty.wav", "text": "anything", "split": "train"},
           {"id": "missing", "audio": "missing.wav", "text": "anything", "split": "train"},
           {"id": "mismatch", "audio": rows[0]["audio"], "split": "train",
            "text": "this transcript is far too long for such a short recording ok"},
           {"id": "blank", "audio": rows[1]["audio"], "text": "  ", "split": "train"}]
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + bad))
    return path


@pytest.fixture
def on_one_device():
    """Model functions called directly (not through a TrainProgram or PlacedModel) trace
    under the first device as the mesh (`sharding.on_one_device`)."""
    from omniflatten_jax.distributed import sharding

    with sharding.on_one_device():
        yield
