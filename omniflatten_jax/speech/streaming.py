"""Streaming speech out: codes chunk by chunk -> audio chunk by chunk, continuous across edges.

The k-means decoder (`kmeans.KMeansMelTokenizer.decode`) inverts a whole stretch of codes at
once: a live conversation cannot wait for a stretch to end, and inverting each chunk on its
own breaks the waveform at every chunk edge (each inversion picks its own phases and its own
gain). `StreamingGriffinLim` inverts each new chunk of frames with the last frame of the
chunk before it held fixed (its spectrum, phases included, as already sent), so the
overlap-add carries across the edge: a frame's window (``n_fft`` samples, centred on it)
reaches into its neighbours, and the samples a step emits are those every window of which is
known. That makes the audio late by half a window (`delay`: 32 ms for the default mel
settings) and exact at the edges: no click, no gain jump, no sample decided twice.

All rows (conversations) are inverted together, one batch of FFTs per Griffin-Lim
iteration, with the magnitude of each code's spectrum computed once (`code_magnitudes`):
numpy only, a few milliseconds per chunk for a handful of conversations on a CPU.
Silent frames have no magnitude and give silence.
"""

from __future__ import annotations

import numpy as np

ITERATIONS = 16  # Griffin-Lim rounds per chunk; the context frame anchors the phases
# The offline decoder scales each stretch to a peak of 0.9; a stream cannot see its peak
# ahead, so it keeps the spectra's own level (that of the speech the codebook was fitted on)
# at half, which leaves eSpeak's loudest vowels (0.74 full scale) room not to clip.
GAIN = 0.5


class StreamingGriffinLim:
    """Batched streaming inversion of magnitude spectra, one chunk of ``width`` frames per row
    per `step` (module docstring)."""

    def __init__(self, magnitudes: np.ndarray, *, n_fft: int, hop: int, rows: int, width: int,
                 iterations: int = ITERATIONS):
        """`magnitudes`: ``[num_codes, n_fft // 2 + 1]``, each code's linear STFT magnitude."""
        if hop > n_fft or n_fft - hop > hop:
            raise ValueError(f"streaming inversion needs hop <= n_fft <= 2 * hop (one frame of "
                             f"context per edge), got n_fft={n_fft}, hop={hop}")
        self.magnitudes = np.asarray(magnitudes, np.float32)
        self.n_fft, self.hop, self.rows, self.width = n_fft, hop, rows, width
        self.iterations = iterations
        self.window = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic Hann
        frames = width + 1  # the held context frame, then the chunk's
        self.length = (frames - 1) * hop + n_fft
        starts = np.arange(frames)[:, None] * hop
        self.index = starts + np.arange(n_fft)[None, :]  # [frames, n_fft] samples per frame
        weight = np.zeros(self.length, np.float64)
        for start in range(0, frames * hop, hop):
            weight[start:start + n_fft] += self.window.astype(np.float64) ** 2
        self.norm = np.where(weight > 1e-6, 1.0 / np.maximum(weight, 1e-6), 0.0)
        bins = np.arange(n_fft // 2 + 1)
        self.advance = np.exp(2j * np.pi * bins * hop / n_fft).astype(np.complex64)
        self.context = np.zeros((rows, n_fft // 2 + 1), np.complex64)

    @property
    def delay(self) -> int:
        """Samples by which the audio trails the frames it voices: half a window."""
        return self.n_fft // 2

    def reset(self, row: int) -> None:
        """A new conversation on `row`: nothing held from the last one."""
        self.context[row] = 0

    def step(self, codes: np.ndarray, voiced: np.ndarray) -> np.ndarray:
        """``codes``/``voiced``: ``[rows, width]`` (code per frame; False where silent) ->
        ``[rows, width * hop]`` float32 audio in [-1, 1], `delay` samples behind the frames."""
        mag = np.where(voiced[..., None], self.magnitudes[codes], 0.0).astype(np.float32)
        # First phases: each bin turning at its own frequency from the held frame's phase,
        # which continues the sound across the edge before any iteration.
        phase = np.angle(self.context)[:, None, :] + np.angle(
            self.advance)[None, None, :] * np.arange(1, self.width + 1)[None, :, None]
        spec = np.concatenate([self.context[:, None, :], mag * np.exp(1j * phase)], axis=1)
        for _ in range(self.iterations):
            wave = self._synthesise(spec)
            found = np.fft.rfft(wave[:, self.index] * self.window, axis=-1)
            spec[:, 1:] = mag * np.exp(1j * np.angle(found[:, 1:]))
        wave = self._synthesise(spec)
        self.context = spec[:, -1].astype(np.complex64)
        out = wave[:, self.hop:self.hop + self.width * self.hop]
        return np.clip(GAIN * out, -1.0, 1.0).astype(np.float32)

    def _synthesise(self, spec: np.ndarray) -> np.ndarray:
        frames = np.fft.irfft(spec, n=self.n_fft, axis=-1) * self.window
        wave = np.zeros((spec.shape[0], self.length), np.float32)
        for i in range(spec.shape[1]):  # width + 1 overlap-adds, each over every row at once
            wave[:, i * self.hop:i * self.hop + self.n_fft] += frames[:, i]
        return wave * self.norm
