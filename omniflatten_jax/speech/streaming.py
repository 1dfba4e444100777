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
scipy's single-precision FFTs, about 2 ms per conversation and chunk on a CPU; a row silent
now and before costs nothing.
Silent frames have no magnitude and give silence. The level is one gain per codebook (its
loudest code held peaks at `LOUDEST_PEAK`), the same for every chunk: no chunk is louder or
quieter than its neighbours because of where its peak fell.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

ITERATIONS = 16  # Griffin-Lim rounds per chunk; the context frame anchors the phases
# The offline decoder scales each stretch to a peak of 0.9; a stream cannot see its peak
# ahead. It scales by one gain per codebook instead: the loudest code, held, peaks at
# `LOUDEST_PEAK`; louder transients are bent softly under 1 above `KNEE` (never clipped).
LOUDEST_PEAK = 0.5
KNEE = 0.8


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
        weight = np.zeros(self.length, np.float64)
        for start in range(0, frames * hop, hop):
            weight[start:start + n_fft] += self.window.astype(np.float64) ** 2
        self.norm = np.where(weight > 1e-6, 1.0 / np.maximum(weight, 1e-6), 0.0).astype(
            np.float32)
        bins = np.arange(n_fft // 2 + 1)
        self.advance = np.exp(2j * np.pi * bins * hop / n_fft).astype(np.complex64)
        self.context = np.zeros((rows, n_fft // 2 + 1), np.complex64)
        self.magnitudes = self.magnitudes.astype(np.float32)
        self.gain = 1.0
        self.gain = LOUDEST_PEAK / self._held_peak(int(np.argmax(self.magnitudes.sum(axis=1))))

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
        out = np.zeros((self.rows, self.width * self.hop), np.float32)
        # A row silent now and before has nothing to invert: only the others are computed
        # (row by row the same numbers, whichever rows share the batch).
        busy = np.flatnonzero(voiced.any(axis=1) | np.abs(self.context).any(axis=1))
        if len(busy):
            out[busy] = self._invert(codes[busy], voiced[busy], busy)
        return out

    def _invert(self, codes: np.ndarray, voiced: np.ndarray, rows: np.ndarray) -> np.ndarray:
        mag = np.where(voiced[..., None], self.magnitudes[codes], 0.0).astype(np.float32)
        # First phases: each bin turning at its own frequency from the held frame's phase,
        # which continues the sound across the edge before any iteration.
        turn = self.advance[None, None, :] ** np.arange(1, self.width + 1)[None, :, None]
        context = self.context[rows]
        start = _unit(context)[:, None, :] * turn
        spec = np.concatenate([context[:, None, :], mag * start], axis=1)
        for _ in range(self.iterations):
            wave = self._synthesise(spec)
            frames = np.lib.stride_tricks.sliding_window_view(wave, self.n_fft, axis=-1)
            found = scipy.fft.rfft(frames[:, self.hop::self.hop] * self.window, axis=-1)
            spec[:, 1:] = mag * _unit(found)
        wave = self._synthesise(spec)
        self.context[rows] = spec[:, -1]
        out = self.gain * wave[:, self.hop:self.hop + self.width * self.hop]
        over = np.abs(out) > KNEE
        out[over] = np.sign(out[over]) * (KNEE + (1 - KNEE) * np.tanh(
            (np.abs(out[over]) - KNEE) / (1 - KNEE)))
        return out.astype(np.float32)

    def _held_peak(self, code: int) -> float:
        """The peak of `code` held for two chunks on row 0 (at gain 1), row 0 left empty."""
        held = np.full((self.rows, self.width), code)
        voiced = np.zeros((self.rows, self.width), bool)
        voiced[0] = True
        peak = max(float(np.abs(self.step(held, voiced)[0]).max()) for _ in range(2))
        self.reset(0)
        return max(peak, 1e-6)

    def _synthesise(self, spec: np.ndarray) -> np.ndarray:
        frames = scipy.fft.irfft(spec, n=self.n_fft, axis=-1) * self.window
        wave = np.zeros((spec.shape[0], self.length), np.float32)
        for i in range(spec.shape[1]):  # width + 1 overlap-adds, each over every row at once
            wave[:, i * self.hop:i * self.hop + self.n_fft] += frames[:, i]
        return wave * self.norm


def _unit(spec: np.ndarray) -> np.ndarray:
    """Each bin's phase as a unit complex number (1 where the bin is empty)."""
    size = np.abs(spec)
    return np.where(size > 1e-12, spec / np.maximum(size, 1e-12), 1.0).astype(np.complex64)
