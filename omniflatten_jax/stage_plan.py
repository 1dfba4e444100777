"""The stage plan: every stage of the curriculum described once, resolved from the config.

OmniFlatten trains in stages (arXiv 2410.17799): ``alignment`` (ASR + TTS), then the dialogue
stages ``half_duplex``, ``duplex_4``, ``duplex_3``, ``duplex_2``, each starting from the final
checkpoint of the one before it. A `StagePlan` says everything a stage is: its layout, its
predecessor, the training section it trains with, which streams carry loss, and (duplex) its
context window. `run.py`, the stage runners, data preparation, evaluation, `show_example`,
the benchmarks and checkpoint metadata all read a plan; none chooses a config section again.
"""

from __future__ import annotations

import dataclasses

from omniflatten_jax.config import ExperimentConfig, FlattenConfig, TrainConfig
from omniflatten_jax.config.stages import (
    ALIGNMENT,
    CHUNKED_STAGES,
    STAGES,
)
from omniflatten_jax.tokens.chunk_layout import ChunkLayout, chunk_layout


def train_section(stage: str) -> str:
    """The `ExperimentConfig` field a stage trains with: alignment reads ``train``, every
    dialogue stage ``dialogue_train`` (the paper's longer rows). The only place that says so."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
    return "train" if stage == ALIGNMENT else "dialogue_train"


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """One stage, resolved. `train.seed` seeds everything of the stage: its dataset (the
    alignment split and tokenizer fit; the dialogue simulation), random init and data order."""

    name: str
    predecessor: str | None  # whose final checkpoint this stage starts from (None: alignment)
    train: TrainConfig  # steps, global batch, row length, seed, logging and checkpoints
    # How dialogues are laid out (None for alignment, whose ASR/TTS sequences do not read it,
    # so that changing a dialogue setting never blocks resuming the alignment stage).
    flatten: FlattenConfig | None
    chunk: ChunkLayout | None  # the chunk layout of a duplex stage
    # Streams that carry loss, and the name each one's loss is logged under.
    loss_names: tuple[tuple[str, str], ...]

    @property
    def kind(self) -> str:
        """``alignment``, ``half_duplex`` or ``duplex``."""
        return "duplex" if self.chunk is not None else self.name

    @property
    def is_dialogue(self) -> bool:
        return self.name != ALIGNMENT

    @property
    def context_chunks(self) -> int | None:
        """Duplex: chunks per training window, the most context the model ever saw, and so
        the most its live decoder attends to (`ChunkLayout.window_chunks`)."""
        return None if self.chunk is None else self.chunk.window_chunks(self.train.seq_len)


def _loss_names(stage: str, flatten: FlattenConfig, chunk: ChunkLayout | None):
    if stage == ALIGNMENT:  # ASR's text is the user text stream, TTS's speech the assistant's
        return (("user_text", "asr_text"), ("assistant_speech", "tts_speech"),
                ("control", "markers"))
    if chunk is not None:
        return tuple((s.key, s.key) for s, _ in chunk.streams if s in chunk.loss_streams)
    user_text = (("user_text", "user_text"),) if flatten.user_text_loss else ()
    return (("assistant_text", "assistant_text"), ("assistant_speech", "assistant_speech"),
            *user_text, ("control", "markers"))


def plan_stage(cfg: ExperimentConfig, stage: str) -> StagePlan:
    """The plan of `stage` in `cfg`'s curriculum."""
    train = getattr(cfg, train_section(stage))
    if stage not in cfg.stages:
        raise ValueError(f"stage {stage} is not in curriculum {cfg.curriculum} {cfg.stages}")
    index = cfg.stages.index(stage)
    chunk = chunk_layout(stage, cfg.flatten) if stage in CHUNKED_STAGES else None
    return StagePlan(name=stage, predecessor=cfg.stages[index - 1] if index else None,
                     train=train, flatten=None if stage == ALIGNMENT else cfg.flatten,
                     chunk=chunk,
                     loss_names=_loss_names(stage, cfg.flatten, chunk))


def plan_curriculum(cfg: ExperimentConfig) -> tuple[StagePlan, ...]:
    """Every stage of `cfg.curriculum`, in training order."""
    return tuple(plan_stage(cfg, stage) for stage in cfg.stages)


def dialogue_plans(cfg: ExperimentConfig) -> tuple[StagePlan, ...]:
    """The dialogue stages of the curriculum: one dialogue dataset serves them all."""
    return tuple(p for p in plan_curriculum(cfg) if p.is_dialogue)
