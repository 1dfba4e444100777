"""timeline.png: both channels of a live-decoded recording on one time axis."""

from __future__ import annotations

import numpy as np

from omniflatten_jax.flatten import Stream


def plot_timeline(result, layout, assistant_wave: np.ndarray, texts: dict[str, list[dict]],
                  path: str, title: str = "") -> None:
    """Waveforms of the user (input) and the assistant (output.wav), the assistant's
    speech/silence frames, and the text turns at the times they were generated."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    seconds = len(result.user_wave) / result.sample_rate
    t = np.arange(len(result.user_wave)) / result.sample_rate
    fig, axes = plt.subplots(3, 1, figsize=(12, 6), sharex=True,
                             gridspec_kw={"height_ratios": [3, 3, 2]})
    for ax, wave, name, color in ((axes[0], result.user_wave, "user (input)", "tab:blue"),
                                  (axes[1], assistant_wave, "assistant (output)", "tab:orange")):
        ax.plot(t, wave, color=color, linewidth=0.4)
        ax.set_ylabel(name)
        ax.set_ylim(-1, 1)
    speaking = result.assistant_speech() != layout.special("<silent_speech>")
    frame_s = 1 / result.frame_rate
    for i in np.flatnonzero(speaking):
        axes[1].axvspan(i * frame_s, (i + 1) * frame_s, color="tab:orange", alpha=0.15, lw=0)
    axes[2].set_ylim(0, 2)
    axes[2].set_yticks([0.5, 1.5], ["user text", "assistant text"])
    for row, key in ((1.5, Stream.ASSISTANT_TEXT.key), (0.5, Stream.USER_TEXT.key)):
        for turn in texts.get(key, []):
            axes[2].axvspan(turn["start_s"], turn["end_s"], ymin=(row - 0.4) / 2,
                            ymax=(row + 0.4) / 2, color="0.85")
            axes[2].text(turn["start_s"], row, turn["text"][:60], fontsize=7, va="center",
                         clip_on=True)
    axes[2].set_xlabel("time (s)")
    axes[2].set_xlim(0, seconds)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
