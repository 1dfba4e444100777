"""The stage names of the curriculum, and its two orders: the one list every other module reads.

OmniFlatten trains in stages (arXiv 2410.17799): ``alignment`` (ASR + TTS), then the dialogue
stages ``half_duplex``, ``duplex_4``, ``duplex_3``, ``duplex_2``, each from the final checkpoint
of the one before it. What each stage is (its layout, data and training section) is resolved
by `omniflatten_jax.stage_plan`.
"""

from __future__ import annotations

ALIGNMENT = "alignment"
HALF_DUPLEX = "half_duplex"
DUPLEX_4, DUPLEX_3, DUPLEX_2 = "duplex_4", "duplex_3", "duplex_2"
CHUNKED_STAGES = (DUPLEX_4, DUPLEX_3, DUPLEX_2)
DIALOGUE_STAGES = (HALF_DUPLEX,) + CHUNKED_STAGES
STAGES = (ALIGNMENT,) + DIALOGUE_STAGES

# "v1": every stage in order; "v2" skips duplex_4 (the paper's ablation).
CURRICULA = {
    "v1": STAGES,
    "v2": (ALIGNMENT, HALF_DUPLEX, DUPLEX_3, DUPLEX_2),
}
