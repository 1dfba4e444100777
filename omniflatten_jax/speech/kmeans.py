"""The embedded default speech tokenizer: log-mel frames quantised by a k-means codebook.

Fitted on the user's own training audio. Each frame (default 25 Hz: 40 ms) becomes the index
of its nearest centroid in normalised log-mel space. Decoding maps codes back to centroid
log-mels and inverts them with Griffin-Lim: rough, but audible, so generated speech can be
heard and re-transcribed. Frames cover the audio with `ceil(samples / hop)` codes.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from omniflatten_jax.config import MelConfig
from omniflatten_jax.speech.audio import resample
from omniflatten_jax.speech.tokenizer import register

KIND = "kmeans_mel"
LOG_FLOOR = 1e-5


def log_mel(wave: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """``[n_frames, n_mels]`` with ``n_frames = ceil(len(wave) / hop)``."""
    import librosa

    n_frames = -(-len(wave) // cfg.hop)
    padded = np.pad(wave, (0, n_frames * cfg.hop - len(wave)))
    mel = librosa.feature.melspectrogram(y=padded, sr=cfg.sample_rate, n_fft=cfg.n_fft,
                                         hop_length=cfg.hop, n_mels=cfg.n_mels, center=True)
    return np.log(mel[:, :n_frames].T + LOG_FLOOR).astype(np.float32)


class KMeansMelTokenizer:
    def __init__(self, cfg: MelConfig, centroids: np.ndarray, mean: np.ndarray, std: np.ndarray):
        self.cfg = cfg
        self.centroids = centroids.astype(np.float32)
        self.mean, self.std = mean.astype(np.float32), std.astype(np.float32)
        self._sq_norms = (self.centroids ** 2).sum(axis=1)

    sample_rate = property(lambda self: self.cfg.sample_rate)
    frame_rate = property(lambda self: float(self.cfg.frame_rate))
    num_codes = property(lambda self: len(self.centroids))

    @classmethod
    def fit(cls, waves, cfg: MelConfig, num_codes: int, seed: int = 0,
            max_frames: int = 200_000) -> "KMeansMelTokenizer":
        """Fits the codebook on (a seeded sample of at most `max_frames` of) the frames."""
        from sklearn.cluster import MiniBatchKMeans

        if not len(waves):
            raise ValueError("no audio to fit the speech tokenizer on")
        frames = np.concatenate([log_mel(w, cfg) for w in waves])
        if len(frames) < num_codes:
            raise ValueError(f"{len(frames)} frames of audio cannot fit {num_codes} codes; "
                             "give more audio or fewer codes")
        rng = np.random.default_rng(seed)
        if len(frames) > max_frames:
            frames = frames[rng.choice(len(frames), max_frames, replace=False)]
        mean, std = frames.mean(axis=0), frames.std(axis=0) + 1e-5
        kmeans = MiniBatchKMeans(n_clusters=num_codes, random_state=seed, batch_size=4096,
                                 n_init=1, max_no_improvement=20)
        kmeans.fit((frames - mean) / std)
        return cls(cfg, kmeans.cluster_centers_, mean, std)

    def encode(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        return self.distances(wave, sample_rate).argmin(axis=1).astype(np.int32)

    def distances(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """``[n_frames, num_codes]``: each frame's squared distance to each centroid, less the
        frame's own squared norm (which does not change the nearest code)."""
        feats = (log_mel(resample(wave, sample_rate, self.cfg.sample_rate), self.cfg)
                 - self.mean) / self.std
        return self._sq_norms[None, :] - 2.0 * feats @ self.centroids.T

    def decode(self, codes: np.ndarray, n_iter: int = 32) -> np.ndarray:
        """Codes -> exactly ``len(codes) * hop`` samples at `sample_rate` (Griffin-Lim on the
        centroids' mel spectra), so that decoded speech stays time-aligned with its codes.

        The same codes give the same samples in any process: Griffin-Lim starts from random
        phases, which librosa otherwise draws from numpy's global generator (a model would
        score differently on every run of an evaluation that listens to its speech)."""
        import librosa

        codes = np.asarray(codes)
        if codes.size == 0:
            return np.zeros(0, np.float32)
        mel = np.exp(self.centroids[codes] * self.std + self.mean).T - LOG_FLOOR
        stft = librosa.feature.inverse.mel_to_stft(
            np.maximum(mel, 0.0), sr=self.cfg.sample_rate, n_fft=self.cfg.n_fft)
        wave = librosa.griffinlim(stft, n_iter=n_iter, hop_length=self.cfg.hop,
                                  n_fft=self.cfg.n_fft, center=True, dtype=np.float32,
                                  random_state=0)
        n = len(codes) * self.cfg.hop
        wave = np.pad(wave[:n], (0, max(0, n - len(wave))))
        peak = np.abs(wave).max()
        return (wave / peak * 0.9 if peak > 0 else wave).astype(np.float32)

    def code_magnitudes(self) -> np.ndarray:
        """``[num_codes, n_fft // 2 + 1]``: each code's linear STFT magnitude (its centroid's
        mel spectrum inverted), the table a streaming decoder inverts chunk by chunk
        (`speech.streaming`). Computed once per call: keep the result."""
        import librosa

        mel = np.exp(self.centroids * self.std + self.mean).T - LOG_FLOOR
        stft = librosa.feature.inverse.mel_to_stft(
            np.maximum(mel, 0.0), sr=self.cfg.sample_rate, n_fft=self.cfg.n_fft)
        return stft.T.astype(np.float32)

    def save(self, path: str) -> None:
        config = json.dumps({"kind": KIND, **dataclasses.asdict(self.cfg)})
        with open(path, "wb") as f:  # a file object: np.savez must not append ".npz"
            np.savez(f, config=np.array(config), centroids=self.centroids, mean=self.mean,
                     std=self.std)


@register(KIND)
def load(source) -> KMeansMelTokenizer:
    with np.load(source) as z:
        config = json.loads(z["config"].item())
        config.pop("kind")
        return KMeansMelTokenizer(MelConfig(**config), z["centroids"], z["mean"], z["std"])
