"""timeline.png: both channels of a live-decoded recording on one time axis, at a resolution
that does not grow with the recording.

The figure is 1,200 pixels wide whatever the duration, so holding (and plotting) every sample
of an hour of audio would cost gigabytes for nothing a pixel can show. `Timeline` keeps each
signal as an `Envelope`: at most ``2 * columns`` bins, each the min, max and sum of the values
it covers; when the bins run out, neighbours merge and each covers twice as much. What is
drawn is exactly what a plot of every sample would show at that width (the waveform's
min-max band), and memory is the same for a minute or an hour.
"""

from __future__ import annotations

import warnings

import numpy as np

from omniflatten_jax.tokens.sequence import Stream

COLUMNS = 1200  # the figure's width in pixels (12 in at 100 dpi)
MAX_LABELS = 40  # text turns labelled per stream; beyond, the figure says how many there were


class Envelope:
    """A stream of values reduced to at most ``2 * columns`` equal bins of min, max and sum
    (the last bin may be partial). Bins double in width as the stream grows."""

    def __init__(self, columns: int = COLUMNS):
        self.capacity = 2 * columns
        self.width = 1  # values per bin
        self.count = 0  # values added
        self.lo = np.zeros(0, np.float32)
        self.hi = np.zeros(0, np.float32)
        self.sum = np.zeros(0, np.float64)
        self._partial: tuple[float, float, float, int] | None = None  # lo, hi, sum, filled

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, np.float32).ravel()
        self.count += len(values)
        while len(values):
            if self._partial is not None:
                values = self._top_up(values)
                continue
            whole = len(values) // self.width
            if whole == 0:
                values = self._top_up(values)
            elif len(self.lo) + whole > self.capacity:
                self._coarsen()
            else:
                block = values[:whole * self.width].reshape(whole, self.width)
                self._append(block.min(1), block.max(1), block.sum(1, dtype=np.float64))
                values = values[whole * self.width:]

    def _append(self, lo, hi, total) -> None:
        self.lo = np.concatenate([self.lo, np.atleast_1d(lo).astype(np.float32)])
        self.hi = np.concatenate([self.hi, np.atleast_1d(hi).astype(np.float32)])
        self.sum = np.concatenate([self.sum, np.atleast_1d(total).astype(np.float64)])

    def _top_up(self, values: np.ndarray) -> np.ndarray:
        """Adds values to the partial bin until it is full; returns the rest."""
        lo, hi, total, filled = self._partial or (np.inf, -np.inf, 0.0, 0)
        take = values[:self.width - filled]
        self._partial = (min(lo, float(take.min())), max(hi, float(take.max())),
                         total + float(take.sum(dtype=np.float64)), filled + len(take))
        if self._partial[3] == self.width:
            self._append(*self._partial[:3])
            self._partial = None
        return values[len(take):]

    def _coarsen(self) -> None:
        """Doubles the bin width: bins merge pairwise; an odd last bin joins the partial one."""
        if len(self.lo) % 2:
            lo, hi, total = self.lo[-1], self.hi[-1], self.sum[-1]
            if self._partial is not None:
                p_lo, p_hi, p_sum, filled = self._partial
                lo, hi, total = min(lo, p_lo), max(hi, p_hi), total + p_sum
            else:
                filled = 0
            self._partial = (float(lo), float(hi), float(total), self.width + filled)
            self.lo, self.hi, self.sum = self.lo[:-1], self.hi[:-1], self.sum[:-1]
        self.lo = self.lo.reshape(-1, 2).min(1)
        self.hi = self.hi.reshape(-1, 2).max(1)
        self.sum = self.sum.reshape(-1, 2).sum(1)
        self.width *= 2

    def bins(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``edges [n + 1]`` (in values from the start), and per bin ``lo``, ``hi``, ``mean``."""
        lo, hi, total = self.lo, self.hi, self.sum
        sizes = np.full(len(lo), self.width, np.float64)
        if self._partial is not None:
            p_lo, p_hi, p_sum, filled = self._partial
            lo, hi = np.append(lo, p_lo), np.append(hi, p_hi)
            total, sizes = np.append(total, p_sum), np.append(sizes, filled)
        edges = np.concatenate([[0.0], np.cumsum(sizes)])
        return edges, lo, hi, total / np.maximum(sizes, 1)


class Timeline:
    """What timeline.png shows, collected while the recording streams: the two waveforms
    (per sample), the assistant's speaking frames (per frame), where each text stream
    generated text (per chunk), and the first `MAX_LABELS` text turns of each stream."""

    def __init__(self, sample_rate: int, frame_rate: float, chunk_seconds: float):
        self.sample_rate, self.frame_rate = sample_rate, frame_rate
        self.chunk_seconds = chunk_seconds
        self.user, self.assistant, self.speaking = Envelope(), Envelope(), Envelope()
        self.text = {s.key: Envelope() for s in (Stream.ASSISTANT_TEXT, Stream.USER_TEXT)}
        self.turns: dict[str, list[dict]] = {key: [] for key in self.text}
        self.turn_counts = dict.fromkeys(self.text, 0)

    def add_turn(self, key: str, turn: dict) -> None:
        self.turn_counts[key] += 1
        if len(self.turns[key]) < MAX_LABELS:
            self.turns[key].append(turn)

    def plot(self, path: str, title: str = "") -> None:
        """Waveforms of the user (input) and the assistant (output.wav), the share of each
        column the assistant spent speaking, and the text turns where they were generated."""
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt

        seconds = max(self.user.count / self.sample_rate, 1 / self.sample_rate)
        fig, axes = plt.subplots(3, 1, figsize=(COLUMNS / 100, 6), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 3, 2]})
        for ax, env, name, color in ((axes[0], self.user, "user (input)", "tab:blue"),
                                     (axes[1], self.assistant, "assistant (output)",
                                      "tab:orange")):
            edges, lo, hi, _ = env.bins()
            if len(lo):  # the min-max band of each column, a step per bin
                ax.fill_between(edges / self.sample_rate, np.append(lo, lo[-1]),
                                np.append(hi, hi[-1]), color=color, lw=0.4, step="post")
            ax.set_ylabel(name)
            ax.set_ylim(-1, 1)
        edges, _, _, share = self.speaking.bins()
        _band(axes[1], edges / self.frame_rate, share, -1, 1, color="tab:orange", alpha=0.15)
        axes[2].set_ylim(0, 2)
        for row, key in ((1.5, Stream.ASSISTANT_TEXT.key), (0.5, Stream.USER_TEXT.key)):
            edges, _, _, generated = self.text[key].bins()
            _band(axes[2], edges * self.chunk_seconds, generated > 0, row - 0.4, row + 0.4,
                  color="0.85")
            for turn in self.turns[key]:
                axes[2].text(turn["start_s"], row, _printable(turn["text"])[:60], fontsize=7,
                             va="center", clip_on=True)
        axes[2].set_yticks([0.5, 1.5], [self._label(Stream.USER_TEXT.key, "user text"),
                                        self._label(Stream.ASSISTANT_TEXT.key,
                                                    "assistant text")])
        axes[2].set_xlabel("time (s)")
        axes[2].set_xlim(0, seconds)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        with warnings.catch_warnings():
            # The labels are what the model generated: characters the bundled DejaVu font has
            # no glyph for are drawn as boxes, which is the honest rendering; matplotlib warns
            # once per character instead, on stderr, for nothing the user can act on.
            warnings.filterwarnings("ignore", r"Glyph \d+ .* missing from font", UserWarning)
            fig.savefig(path, dpi=100)
        plt.close(fig)

    def _label(self, key: str, name: str) -> str:
        n = self.turn_counts[key]
        return name if n <= MAX_LABELS else f"{name}\n(first {MAX_LABELS} of {n} labelled)"


def _band(ax, edges: np.ndarray, values: np.ndarray, lo: float, hi: float, **style) -> None:
    """Fills from `lo` up to ``lo + values * (hi - lo)`` over each bin (values in [0, 1])."""
    if len(values) == 0 or not np.any(values):
        return
    top = lo + np.asarray(values, np.float64) * (hi - lo)
    ax.fill_between(edges, lo, np.append(top, top[-1]), step="post", lw=0, **style)


def _printable(text: str) -> str:
    """Control characters (a model can generate NUL bytes) shown as '?'."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)
