"""The embedded corpus's voices: several varied user voices and one fixed assistant voice."""

from __future__ import annotations

import numpy as np

from data_pipelines.synth.espeak import Voice

USER_BASES = {"en": ("en-us", "en+m3", "en+f3", "en-us+f2", "en+m1"),
              "zh": ("cmn", "cmn+m3", "cmn+f3", "cmn+f2")}
ASSISTANT = {"en": Voice("en-us+f4", rate=170, pitch=55), "zh": Voice("cmn+f4", 170, 55)}


def user_voice(language: str, rng: np.random.Generator) -> Voice:
    """A user voice: a base voice with a random speaking rate and pitch."""
    bases = USER_BASES[language]
    return Voice(bases[int(rng.integers(len(bases)))], rate=int(rng.integers(140, 191)),
                 pitch=int(rng.integers(25, 76)))


def assistant_voice(language: str) -> Voice:
    return ASSISTANT[language]
