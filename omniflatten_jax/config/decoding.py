"""The decoding policy of a duplex stage: a config section in a module of its own.

`config.ExperimentConfig.decoding` holds the fields a stage keeps; the stage chooses the onset
threshold and memory on its validation split and stores the result in its checkpoints
(`CheckpointMeta.decoding`). `config` re-exports it, where every section is found.
"""

from __future__ import annotations

import dataclasses

from omniflatten_jax.config.rules import finite as _finite
from omniflatten_jax.config.rules import require as _require

SPEAK_RULES = ("threshold", "token")


@dataclasses.dataclass(frozen=True)
class DecodingPolicy:
    """How a duplex model's generated streams are decoded: part of a duplex stage's description.

    Each generated stream has a token for "nothing now" (<silent_speech>, <silent_text>), and
    emitting anything else is taking or holding the floor. With ``speak_rule="token"`` that
    token is one more id drawn with the rest: under greedy decoding it wins whenever it is the
    single most likely id, so a model that gives speaking 60% spread over 256 speech codes stays
    mute. ``"threshold"`` decides speak or listen first, from P(speak) = 1 - P(silence token),
    then draws the content among the other ids (greedy, or by the stream's temperature/top-k):

    * while silent, the stream starts when the onset probability accumulated over the silence,
      ``1 - prod(P(silence))`` with each earlier factor's log weighted by ``onset_memory`` per
      position (0: this position alone), reaches `onset_threshold`;
    * while speaking, it stops when P(silence) exceeds `stop_threshold`.

    A stage stores the policy it chose on its validation split (`experiments/dialogue_stage`)
    in its checkpoints; every command that decodes reads it, and flags override it."""

    speak_rule: str = "threshold"
    onset_threshold: float = 0.5
    stop_threshold: float = 0.5
    onset_memory: float = 0.0
    text_temperature: float = 0.0  # 0 = greedy
    text_top_k: int = 0  # 0 = all legal ids
    speech_temperature: float = 0.0
    speech_top_k: int = 0
    seed: int = 0

    def __post_init__(self):
        _require(self.speak_rule in SPEAK_RULES, "speak_rule", self.speak_rule,
                 f"one of {SPEAK_RULES}")
        for name in ("onset_threshold", "stop_threshold", "onset_memory"):
            value = getattr(self, name)
            _require(_finite(value) and 0 <= value <= 1, name, value, "in [0, 1]")
        for name in ("text_temperature", "speech_temperature"):
            value = getattr(self, name)
            _require(_finite(value) and value >= 0, name, value, "a finite number >= 0")
        for name in ("text_top_k", "speech_top_k"):
            _require(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")

    def describe(self) -> str:
        """One line for logs and tables."""
        if self.speak_rule == "token":
            rule = "silence as a token"
        else:
            rule = f"onset {self.onset_threshold:g}, stop {self.stop_threshold:g}" + (
                f", memory {self.onset_memory:g}" if self.onset_memory else "")
        heat = lambda t, k: "greedy" if t == 0 else f"T={t:g}" + (f" top-{k}" if k else "")  # noqa: E731
        return (f"{rule}; speech {heat(self.speech_temperature, self.speech_top_k)}, text "
                f"{heat(self.text_temperature, self.text_top_k)}, seed {self.seed}")
