"""Audio loading checks and the embedded k-means speech tokenizer on real synthesised speech."""

import numpy as np
import pytest
import soundfile

from omniflatten_jax.config import MelConfig
from omniflatten_jax.speech import AudioError, load_audio, load_speech_tokenizer
from omniflatten_jax.speech.kmeans import KMeansMelTokenizer


def test_any_rate_and_channel_count_becomes_mono_at_the_target_rate(tmp_path):
    t = np.arange(44_100) / 44_100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 220 * t)], 1) * 0.5
    soundfile.write(tmp_path / "a.wav", stereo, 44_100)
    soundfile.write(tmp_path / "a.flac", stereo, 44_100)
    for name in ("a.wav", "a.flac"):
        wave = load_audio(tmp_path / name, 16_000)
        assert wave.ndim == 1 and wave.dtype == np.float32
        assert abs(len(wave) - 16_000) <= 2


def test_bad_audio_files_are_named_in_the_error(tmp_path):
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00not audio at all")
    soundfile.write(tmp_path / "empty.wav", np.zeros(0), 16_000)
    soundfile.write(tmp_path / "short.wav", np.zeros(160), 16_000)
    with pytest.raises(AudioError, match="corrupt.wav: cannot be read"):
        load_audio(tmp_path / "corrupt.wav", 16_000)
    with pytest.raises(AudioError, match="empty.wav: the audio is empty"):
        load_audio(tmp_path / "empty.wav", 16_000)
    with pytest.raises(AudioError, match="short.wav: 0.010 s .* shorter"):
        load_audio(tmp_path / "short.wav", 16_000, min_seconds=0.1)
    with pytest.raises(AudioError, match="missing.wav: no such audio file"):
        load_audio(tmp_path / "missing.wav", 16_000)


@pytest.fixture(scope="module")
def tokenizer(spoken_corpus):
    root, _, rows = spoken_corpus
    waves = [load_audio(root / r["audio"], 16_000) for r in rows]
    return KMeansMelTokenizer.fit(waves, MelConfig(), num_codes=32, seed=0), waves


def test_tokenizer_frames_codes_and_file_round_trip(tokenizer, tmp_path):
    tok, waves = tokenizer
    codes = tok.encode(waves[0], 16_000)
    assert len(codes) == -(-len(waves[0]) // 640)  # 25 Hz at 16 kHz: one code per 640 samples
    assert codes.min() >= 0 and codes.max() < 32 and len(set(codes.tolist())) > 4
    # Audio at another rate is resampled to the tokenizer's rate first.
    import soxr
    again = tok.encode(soxr.resample(waves[0], 16_000, 22_050), 22_050)
    assert abs(len(again) - len(codes)) <= 1 and np.mean(again[:len(codes) - 1] ==
                                                          codes[:len(again) - 1]) > 0.7
    tok.save(str(tmp_path / "tok.npz"))
    loaded = load_speech_tokenizer(tmp_path / "tok.npz")
    np.testing.assert_array_equal(loaded.encode(waves[1], 16_000), tok.encode(waves[1], 16_000))
    assert loaded.frame_rate == 25 and loaded.num_codes == 32


def test_decoder_makes_audible_audio_of_the_right_length(tokenizer):
    tok, waves = tokenizer
    codes = tok.encode(waves[2], 16_000)
    audio = tok.decode(codes, n_iter=8)
    assert len(audio) == len(codes) * 640
    assert np.isfinite(audio).all() and np.sqrt(np.mean(audio ** 2)) > 0.01
    # Re-encoding the decoded audio recovers many of the codes: the decoder is not noise.
    assert np.mean(tok.encode(audio, 16_000) == codes) > 0.2
    # The same codes, the same samples, whatever numpy's global generator holds (it differs
    # between processes): evaluations that listen to a model's speech repeat.
    np.random.seed(1)
    np.testing.assert_array_equal(tok.decode(codes, n_iter=8), audio)


def test_not_a_tokenizer_file(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a speech tokenizer file"):
        load_speech_tokenizer(tmp_path / "x.npz")


def test_the_workdir_tokenizer_fit_is_the_same_file_in_any_process(spoken_corpus, tmp_path):
    """Fitted from recordings in two processes with different hash seeds, the tokenizer file
    is byte for byte the same (the utterances are read in a fixed order; k-means is seeded).
    eSpeak synthesis itself is not bit-exact across processes: a pod fits once, on process 0.
    """
    import hashlib
    import os
    import subprocess
    import sys

    _, manifest, _ = spoken_corpus
    script = ("import sys; from data_pipelines.prepare import speech_tokenizer, "
              "_speech_text_inputs; from tests.helpers import small_config; "
              "cfg = small_config(sys.argv[1]); items, inputs = _speech_text_inputs(cfg); "
              "print(speech_tokenizer(cfg, sys.argv[2], items, inputs.key))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = []
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", script, f"manifest:{manifest}",
                              str(tmp_path / seed)], cwd=root, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONHASHSEED=seed, JAX_PLATFORMS="cpu"))
        assert out.returncode == 0, out.stderr[-3000:]
        files.append(hashlib.sha256(open(out.stdout.split()[-1], "rb").read()).hexdigest())
    assert files[0] == files[1]
