"""The experiment's sections: one frozen dataclass per part of a run, and the `--set` override.

Every config is a frozen dataclass that round-trips through a plain dict (``to_dict`` /
``from_dict``) so that it can be written next to checkpoints and exports and read back.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from omniflatten_jax.config.decoding import DecodingPolicy
from omniflatten_jax.config.model import ModelConfig
from omniflatten_jax.config.rules import ConfigError
from omniflatten_jax.config.rules import finite as _finite
from omniflatten_jax.config.rules import require as _require
from omniflatten_jax.config.stages import CURRICULA
from omniflatten_jax.config.token_layout import TokenLayout

# Where evaluation and decoding keep the parameters (`placement.PlacedModel`).
ParamPlacement = Literal["sharded", "replicated"]
PARAM_PLACEMENTS = ("sharded", "replicated")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes; one of them may be -1 (all remaining devices).

    Qwen2-0.5B has 2 KV heads, so tensor parallelism beyond 2 does not divide them; data + FSDP
    is the default. ``rules`` maps logical axis names (on parameters and activations) to mesh axes.
    With ``slices`` > 1 (several TPU slices joined by the data-centre network) the sizes are
    those of one slice and the ``data`` axis also runs across slices: its size is
    ``slices * data``, and only data parallelism crosses the slower network.
    """

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    slices: int = 1
    rules: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
        ("batch", ("data", "fsdp")),
        ("length", None),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("head_dim", None),
        ("vocab", "tensor"),
        ("act_embed", None),
        ("act_mlp", "tensor"),
        ("act_heads", "tensor"),
        ("act_kv_heads", "tensor"),
        ("act_vocab", "tensor"),
    )

    def __post_init__(self):
        if self.slices < 1:
            raise ConfigError(f"mesh.slices must be at least 1, not {self.slices}")

    @property
    def axis_names(self) -> tuple[str, str, str]:
        return ("data", "fsdp", "tensor")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)


@dataclasses.dataclass(frozen=True)
class FlattenConfig:
    """How dialogue streams become chunks; the defaults follow OmniFlatten (README: "Decisions")."""

    speech_chunk: int = 10
    text_chunk: int = 2
    # Loss on the user text stream (duplex_4, half_duplex); the method masks the user channel.
    user_text_loss: bool = False
    # Mark the start / end of each turn's text inside the text stream with [SOT] / [EOT].
    text_start_marker: bool = False
    text_end_marker: bool = True
    # Chunks by which an assistant turn's text may start before its speech (0: the same chunk).
    assistant_text_lead_chunks: int = 0

    def __post_init__(self):
        if self.speech_chunk < 1 or self.text_chunk < 1:
            raise ConfigError(f"chunk sizes must be >= 1, got speech={self.speech_chunk} "
                             f"text={self.text_chunk}")
        if self.assistant_text_lead_chunks < 0:
            raise ConfigError("assistant_text_lead_chunks must be >= 0")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW (0.9, 0.95), weight decay 0.1, linear warm-up then cosine decay, clipping.

    The schedule spans the stage's `TrainConfig.steps` (passed in, not repeated here)."""

    peak_lr: float = 2e-5
    warmup_steps: int = 100
    end_lr_ratio: float = 0.1  # the cosine ends at peak_lr * end_lr_ratio
    b1: float = 0.9
    b2: float = 0.95
    weight_decay: float = 0.1
    clip_norm: float = 1.0

    def __post_init__(self):
        _require(_finite(self.peak_lr) and self.peak_lr > 0, "peak_lr", self.peak_lr,
                 "a finite number > 0")
        _require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, ">= 0")
        _require(_finite(self.end_lr_ratio) and 0 <= self.end_lr_ratio <= 1, "end_lr_ratio",
                 self.end_lr_ratio, "in [0, 1]")
        for name in ("b1", "b2"):
            value = getattr(self, name)
            _require(_finite(value) and 0 <= value < 1, name, value, "in [0, 1)")
        _require(_finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
                 self.weight_decay, "a finite number >= 0")
        _require(_finite(self.clip_norm) and self.clip_norm > 0, "clip_norm", self.clip_norm,
                 "a finite number > 0")


@dataclasses.dataclass(frozen=True)
class MelConfig:
    """The log-mel frames of the embedded speech tokenizer (stored inside its file)."""

    sample_rate: int = 16_000
    frame_rate: int = 25  # speech tokens per second: 40 ms each
    n_mels: int = 80
    n_fft: int = 1024

    @property
    def hop(self) -> int:
        if self.sample_rate % self.frame_rate:
            raise ConfigError(f"frame_rate {self.frame_rate} must divide sample_rate "
                             f"{self.sample_rate}")
        return self.sample_rate // self.frame_rate


@dataclasses.dataclass(frozen=True)
class SpeechConfig:
    """The speech tokenizer: a pretrained file, or the embedded k-means log-mel one fitted here.

    Audio rates and frame rates are the tokenizer's own (`SpeechTokenizer.sample_rate`,
    `.frame_rate`); `mel` only says how the embedded one is fitted."""

    tokenizer_path: str = ""  # "" = fit the embedded tokenizer on the training audio
    mel: MelConfig = MelConfig()
    fit_max_frames: int = 200_000
    fit_max_utterances: int = 1500


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where speech-text data comes from and how it is checked, split and mixed."""

    source: str = "embedded"  # "embedded", "librispeech:DIR" or "manifest:FILE.jsonl"
    # The transcripts' language: the embedded corpus's ("en" or "zh"); any source's
    # transcripts must be written in its script (`tokens.transcripts.SCRIPTS`).
    language: str = "en"
    max_utterances: int = 0  # 0 = all
    max_text_chars: int = 100
    min_audio_seconds: float = 0.2
    max_audio_seconds: float = 30.0
    # Transcripts whose characters per second of audio fall outside this range do not match.
    chars_per_second: tuple[float, float] = (2.0, 40.0)
    normalize_text: bool = True  # lowercase, drop punctuation but apostrophes
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    on_bad_input: str = "skip"  # "skip" (and count) or "stop"; dialogue files follow it too
    # Audio with no speech-like frames (silence, a steady tone, a square wave, absurd
    # amplitude) paired with a transcript is a bad input (`speech.activity`).
    check_speech_activity: bool = True
    # Held-out utterances whose transcript also occurs in train are always dropped (counted).
    asr_fraction: float = 0.5  # share of ASR examples in the alignment mix (the rest is TTS)
    num_workers: int = 1  # Grain worker processes (0 = in the main process)
    num_packing_bins: int = 8

    def __post_init__(self):
        if self.on_bad_input not in ("skip", "stop"):
            raise ConfigError(f"on_bad_input must be skip or stop, not {self.on_bad_input!r}")
        if not 0.0 <= self.asr_fraction <= 1.0:
            raise ConfigError(f"asr_fraction must lie in [0, 1], got {self.asr_fraction}")


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    """Conversation timing (data_pipelines/synth/conversation.py): every range is uniform."""

    lead_silence_s: tuple[float, float] = (0.2, 0.6)
    reply_gap_s: tuple[float, float] = (0.1, 0.5)  # (a) the assistant replies after this gap
    interrupt_probability: float = 0.3  # (b) the user cuts into an assistant turn
    interrupt_at: tuple[float, float] = (0.3, 0.7)  # ... after this fraction of it
    reaction_s: tuple[float, float] = (0.1, 0.3)  # ... and the assistant stops this soon
    wait_s: tuple[float, float] = (0.4, 1.5)  # (c) silence before the user speaks again
    tail_silence_s: float = 0.5
    snr_db: tuple[float, float] = (15.0, 30.0)  # noise on the user channel
    # (d) The user pauses mid-turn (between two words, after this fraction of them) for this
    # long, and the assistant must not take the floor (FDB's pause handling).
    pause_probability: float = 0.25
    pause_at: tuple[float, float] = (0.3, 0.7)
    pause_s: tuple[float, float] = (0.8, 2.0)
    pause_min_words: int = 4  # shorter user turns are not paused
    # (e) The user backchannels while the assistant speaks, after this fraction of its turn,
    # and the assistant keeps talking (FDB's backchannel robustness).
    user_backchannel_probability: float = 0.25
    user_backchannel_at: tuple[float, float] = (0.2, 0.6)
    backchannel_min_s: float = 2.0  # a turn shorter than this gets no backchannel
    # ... and the other speaker goes on at least this long after it (turn-taking evaluation
    # checks the assistant keeps talking that long after a user backchannel).
    backchannel_margin_s: float = 0.5
    backchannels: tuple[str, ...] = ("mm-hm", "right", "yeah", "okay", "i see", "uh-huh")
    # (f) The assistant backchannels during a long user turn (speech, no text), after this
    # fraction of it; off by default: whether a model should learn to is the user's choice.
    assistant_backchannel_probability: float = 0.0
    assistant_backchannel_at: tuple[float, float] = (0.3, 0.7)


@dataclasses.dataclass(frozen=True)
class DialogueConfig:
    """Spoken dialogues for the half_duplex and duplex stages."""

    source: str = "embedded"  # "embedded" (chatterbot-corpus) or "jsonl:FILE"
    language: str = "en"  # the voices' language; turns must be written in its script
    max_dialogues: int = 0  # 0 = all
    max_turns: int = 8  # longer dialogues keep their first turns
    # Embedded corpus: consecutive conversations are joined until a dialogue has this many
    # turns. Chatterbot holds mostly single question-answer pairs, and only an assistant turn
    # followed by a user turn can be interrupted or waited after (1 = no joining).
    join_to_turns: int = 6
    max_turn_chars: int = 100  # a dialogue is cut before its first longer turn
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    simulation: SimulationConfig = SimulationConfig()
    # Each training dialogue is simulated this many times (voices, timing, pauses and
    # backchannels drawn anew each time); the held-out splits are simulated once.
    train_variants: int = 1

    def __post_init__(self):
        _require(isinstance(self.train_variants, int) and self.train_variants >= 1,
                 "train_variants", self.train_variants, "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8  # global, over all hosts
    seq_len: int = 256
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    eval_every: int = 0  # 0 = evaluate only after training
    # A step whose loss or gradients are not finite: "stop" the run naming the step (the last
    # good checkpoints are kept), or "skip" its update (parameters and optimiser unchanged)
    # and stop once more than `max_skipped_steps` were skipped.
    on_nonfinite: str = "stop"
    max_skipped_steps: int = 10
    # A finite loss diverged when it is more than this many times the recent average of the
    # accepted steps' losses and above the run's first loss (`training.guard`); it is handled
    # as a non-finite one. 0 turns the check off.
    divergence_factor: float = 100.0
    # The loss at the assistant speech positions where it starts or stops speaking counts this
    # many times (`training.step.TurnWeight`): the speak/listen decisions are a few positions
    # among thousands that repeat the state before them.
    turn_weight: float = 1.0

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "checkpoint_every",
                     "keep_checkpoints"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value >= 1, name, value, "an integer >= 1")
        _require(self.seq_len >= 2, "seq_len", self.seq_len, ">= 2")
        _require(self.eval_every >= 0, "eval_every", self.eval_every, ">= 0 (0 = at the end)")
        _require(self.on_nonfinite in ("stop", "skip"), "on_nonfinite", self.on_nonfinite,
                 "stop or skip")
        _require(self.max_skipped_steps >= 0, "max_skipped_steps", self.max_skipped_steps,
                 ">= 0")
        _require(_finite(self.divergence_factor) and (self.divergence_factor == 0
                                                     or self.divergence_factor > 1),
                 "divergence_factor", self.divergence_factor, "0 (off) or a number > 1")
        _require(_finite(self.turn_weight) and self.turn_weight > 0, "turn_weight",
                 self.turn_weight, "a finite number > 0")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    max_examples: int = 100  # held-out utterances for ASR
    tts_max_examples: int = 32  # TTS is slower: fewer utterances
    batch_size: int = 16
    # Where evaluation keeps the parameters: "sharded" as training holds them (by the mesh
    # rules), or "replicated" on every device (no gathers per generated token; must fit).
    params: ParamPlacement = "sharded"
    # Duplex stages: held-out dialogues as Full-Duplex-Bench samples, at most this many per
    # task, streamed and scored by the FDB harness (0 = not run).
    fdb_samples_per_task: int = 6
    # Duplex stages choose their decoding policy's onset threshold among these, under each of
    # these onset memories, on the validation split's FDB clips (`evaluation.operating_curve`;
    # empty: keep `decoding.onset_threshold` / `.onset_memory`), at most this many clips per
    # task (0 = all). Every point decodes every clip. All, by default: on 12 clips a task one
    # clip moves a TOR by 0.083, and the choice flipped between seeds (docs/turn_taking.md).
    policy_onsets: tuple[float, ...] = (0.1, 0.2, 0.35, 0.5)
    policy_memories: tuple[float, ...] = (0.0, 0.8)
    policy_samples_per_task: int = 0

    def __post_init__(self):
        if self.params not in PARAM_PLACEMENTS:
            raise ConfigError(f"eval.params must be one of {PARAM_PLACEMENTS}, "
                             f"not {self.params!r}")
        for name in ("policy_onsets", "policy_memories"):
            values = getattr(self, name)
            _require(all(_finite(t) and 0 <= t <= 1 for t in values), name, values,
                     "values in [0, 1]")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything one run needs; named configurations live in experiments/configs/."""

    name: str
    model: ModelConfig
    layout: TokenLayout
    flatten: FlattenConfig = FlattenConfig()
    speech: SpeechConfig = SpeechConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    mesh: MeshConfig = MeshConfig()
    eval: EvalConfig = EvalConfig()
    dialogue: DialogueConfig = DialogueConfig()
    # The dialogue stages (half_duplex, duplex_*) train with these steps, batch and row length.
    dialogue_train: TrainConfig = TrainConfig(steps=1000, seq_len=512)
    # A name in `config.stages.CURRICULA`: "v1" every stage, "v2" skips duplex_4.
    curriculum: str = "v1"
    # How duplex stages decode: every field but the onset threshold, which each stage chooses
    # on its validation split (`eval.policy_onsets`) and stores in its checkpoints.
    decoding: DecodingPolicy = DecodingPolicy()

    def __post_init__(self):
        if self.curriculum not in CURRICULA:
            raise ConfigError(f"curriculum must be one of {sorted(CURRICULA)}, "
                             f"not {self.curriculum!r}")

    @property
    def stages(self) -> tuple[str, ...]:
        return CURRICULA[self.curriculum]



def _parse(text: str, current: Any) -> Any:
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ConfigError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1")
    if isinstance(current, tuple):
        items = [t for t in text.strip("()[] ").split(",") if t.strip()]
        return tuple(_parse(t.strip(), current[0]) if current else t.strip() for t in items)
    return type(current)(text)


def override(config: Any, assignment: str) -> Any:
    """Applies ``"train.steps=100"`` to a nested frozen config, parsed by the field's type and
    validated by its class; an error names the whole setting (``train.steps``)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.field=value")
    path, text = assignment.split("=", 1)
    try:
        return _override(config, path.strip().split("."), text)
    except ValueError as e:
        raise ConfigError(f"cannot set {path.strip()} to {text!r}: {e}") from None


def _override(config: Any, path: list[str], text: str) -> Any:
    head, *rest = path
    fields = {f.name for f in dataclasses.fields(config)}
    if head not in fields:
        raise ConfigError(f"{type(config).__name__} has no field {head!r}; fields: "
                          f"{sorted(fields)}")
    current = getattr(config, head)
    value = _override(current, rest, text) if rest else _parse(text, current)
    return dataclasses.replace(config, **{head: value})
