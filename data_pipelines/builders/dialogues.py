"""TFDS builder of simulated spoken dialogues: token streams, turn times and word times.

Per dialogue: both channels as speech ids per frame (the assistant channel holds
<silent_speech> where the assistant is silent), each turn's role, start/end frames, text ids
and the frame at which each text token's word starts (the synthesiser's word times; the
chunking uses them for user text only), and the pattern at each turn change. The held-out
splits (validation, test) also keep both channels' audio (int16): FDB samples are cut from it
and turn-taking can be heard.

Nothing is dropped silently: a dialogue that cannot be used (a `Rejected` entry of
`synth.dialogues.dialogue_entries`, one left with no assistant turn by cleaning, or one that
cannot be laid out for every planned stage) is counted in build_report.json as
``<split>/skipped_<reason>``, with the first messages under ``first_skipped``. Under
``data.on_bad_input=stop`` (`DialogueContext.on_bad_input`) a problem of the user's dialogue
file stops the build naming file and line; layout problems follow from the stage settings
and are always counted.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines import records
from data_pipelines.builders import common, recipe
from data_pipelines.corpus import BadInputError, check_policy
from data_pipelines.dialogue_examples import assistant_text_lag, stage_examples
from data_pipelines.records import EVENT_KINDS, ROLES
from data_pipelines.synth import voices
from data_pipelines.synth.conversation import (
    Conversation,
    SimulatedTurn,
    simulate,
)
from data_pipelines.synth.dialogues import Rejected, TextDialogue, clean_dialogue
from data_pipelines.synth.espeak import Synthesizer
from omniflatten_jax.config import DialogueConfig
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.speech.tokenizer import SpeechTokenizer
from omniflatten_jax.stage_plan import StagePlan
from omniflatten_jax.tokens.dialogue_chunks import TextOverflowError
from omniflatten_jax.tokens.text_tokenizers import text_tokenizer

log = logging.getLogger(__name__)

NAME = "omniflatten_dialogues"


@dataclasses.dataclass(frozen=True)
class DialogueContext:
    tokenizer: SpeechTokenizer
    layout: TokenLayout
    cfg: DialogueConfig
    seed: int
    plans: tuple[StagePlan, ...]  # every dialogue stage the dataset must serve
    normalize_text: bool = True
    on_bad_input: str = "skip"  # data.on_bad_input: "stop" on a problem of the user's file
    tokenizer_path: str | None = None  # where `tokenizer` was read: what Beam workers get

    # A dialogue entry is (id, turns or Rejected, n): n, its place among the usable
    # dialogues of its split, seeds its voices and timing (`dialogue_entries_per_split`).
    steps = ("synthesise", "tokenise", "lay out")

    def __post_init__(self):
        check_policy(self.on_bad_input)

    def __reduce_ex__(self, protocol):
        return recipe.reduce_with_tokenizer_file(self) or super().__reduce_ex__(protocol)

    def step(self, name: str, split: str, state):
        if name == "synthesise":
            return state[0], synthesised(*state, self)
        if name == "tokenise":
            uid, conv = state
            return uid, conv, tokenize(conv, self)
        # Held-out dialogues keep their audio: FDB samples are cut from it (validation: to
        # choose a duplex stage's decoding policy; test: to score it).
        return laid_out(*state, self, keep_audio=split in ("validation", "test"))

    def stops(self, state, reason: str) -> bool:
        """Only problems of the user's file stop: layout problems follow from settings."""
        turns = state[1]
        return self.on_bad_input == "stop" and isinstance(turns, Rejected) and turns.bad_input

    def skip_key(self, reason: str) -> str:
        return f"skipped_{reason}"

    def kept_keys(self, example: dict) -> list[str]:
        patterns = example["boundaries"].split(",") if example["boundaries"] else []
        return ["kept", *patterns, *(EVENT_KINDS[k] for k in example["event_kinds"])]


def problem(example: dict, ctx: DialogueContext) -> str | None:
    """Why a simulated dialogue cannot train every planned stage, or None."""
    try:
        for plan in ctx.plans:
            stage_examples(example, ctx.layout, plan)
    except TextOverflowError:
        return "text_overflow"
    except ValueError:
        return "turn_longer_than_context"
    if any(assistant_text_lag(example, ctx.layout, flatten) > 0
           for flatten in {p.flatten for p in ctx.plans}):
        return "assistant_text_after_its_speech"
    return None


def token_frames(text: str, ids: list[int], turn: SimulatedTurn, layout: TokenLayout,
                 frame_rate: float) -> np.ndarray:
    """The frame at which each text token's word starts (tokens before any word: the first)."""
    tok = text_tokenizer(layout)
    # Character offset at which each token starts, from the decoded prefix lengths.
    byte_starts = np.cumsum([0] + [len(tok.token_bytes(i)) for i in ids[:-1]])
    char_of_byte = np.zeros(len(text.encode("utf-8")) + 1, np.int64)
    pos = 0
    for c, ch in enumerate(text):
        n = len(ch.encode("utf-8"))
        char_of_byte[pos:pos + n] = c
        pos += n
    char_of_byte[pos:] = len(text)
    token_chars = char_of_byte[np.minimum(byte_starts, len(char_of_byte) - 1)]
    word_starts = turn.word_chars[:, 0] if len(turn.word_chars) else np.zeros(1, int)
    times = turn.word_starts_s if len(turn.word_starts_s) else np.array([turn.start_s])
    word = np.clip(np.searchsorted(word_starts, token_chars, side="right") - 1, 0, len(times) - 1)
    return np.floor(times[word] * frame_rate).astype(np.int32)


def tokenize(conv: Conversation, ctx: DialogueContext) -> dict:
    """A simulated conversation -> the arrays the dataset stores."""
    layout, tok = ctx.layout, ctx.tokenizer
    rate = tok.frame_rate
    user = layout.speech_ids(tok.encode(conv.user_audio, conv.sample_rate))
    assistant_codes = layout.speech_ids(tok.encode(conv.assistant_audio, conv.sample_rate))
    n = len(user)
    assistant = np.full(n, layout.special("<silent_speech>"), np.int32)
    roles, starts, ends, lengths, text_ids, frames = [], [], [], [], [], []
    text_tok = text_tokenizer(layout)
    kinds, event_starts, event_ends = [], [], []
    for event in conv.events:
        start = min(int(np.floor(event.start_s * rate)), n)
        end = min(int(np.ceil(event.end_s * rate)), n)
        if event.kind == "assistant_backchannel":  # speech without text
            assistant[start:end] = assistant_codes[start:end]
        kinds.append(EVENT_KINDS.index(event.kind))
        event_starts.append(start)
        event_ends.append(end)
    for turn in conv.turns:
        start = min(int(np.floor(turn.start_s * rate)), n)
        end = min(int(np.ceil(turn.end_s * rate)), n)
        if turn.role == "assistant":
            assistant[start:end] = assistant_codes[start:end]
        ids = text_tok.encode(turn.text)
        roles.append(ROLES.index(turn.role))
        starts.append(start)
        ends.append(end)
        lengths.append(len(ids))
        text_ids += ids
        frames += token_frames(turn.text, ids, turn, layout, rate).tolist()
    return {"user_speech": user, "assistant_speech": assistant,
            "turn_roles": np.asarray(roles, np.int32), "turn_starts": np.asarray(starts, np.int32),
            "turn_ends": np.asarray(ends, np.int32),
            "turn_text_lengths": np.asarray(lengths, np.int32),
            "text_ids": np.asarray(text_ids, np.int32),
            "token_frames": np.asarray(frames, np.int32),
            "boundaries": ",".join(conv.boundaries), "snr_db": np.float32(conv.snr_db),
            "event_kinds": np.asarray(kinds, np.int32),
            "event_starts": np.asarray(event_starts, np.int32),
            "event_ends": np.asarray(event_ends, np.int32)}


def synthesised(uid: str, turns: TextDialogue | Rejected, n: int,
                ctx: DialogueContext) -> Conversation:
    """A usable dialogue spoken by its two voices, with its turn timing; raises
    BadInputError(reason, message) for a rejected one. `n` seeds its voices and timing."""
    if isinstance(turns, Rejected):
        raise BadInputError(turns.reason, turns.message)
    turns = clean_dialogue(turns, ctx.cfg, ctx.normalize_text, f"dialogue {uid}")
    rng = np.random.default_rng([ctx.seed, n, len(uid)])
    Synthesizer.start_afresh()  # its audio: a function of the dialogue alone
    return simulate(turns, voices.user_voice(ctx.cfg.language, rng),
                    voices.assistant_voice(ctx.cfg.language), ctx.cfg.simulation, rng,
                    ctx.tokenizer.sample_rate)


def laid_out(uid: str, conv: Conversation, example: dict, ctx: DialogueContext,
             keep_audio: bool) -> dict:
    """The stored example, once checked to lay out for every planned stage."""
    reason = problem(example, ctx)
    if reason:
        raise BadInputError(reason, f"dialogue {uid}: {reason.replace('_', ' ')} "
                            "(see the stage settings: flatten, dialogue_train.seq_len)")
    example = dict(example)
    for channel in ("user", "assistant"):
        audio = getattr(conv, f"{channel}_audio")
        example[f"{channel}_audio"] = ((audio * 32767).astype(np.int16) if keep_audio
                                       else np.zeros(0, np.int16))
    example["id"] = uid
    return example


def make_example(uid: str, turns: TextDialogue | Rejected, ctx: DialogueContext,
                 n: int, keep_audio: bool) -> dict:
    """One dialogue -> the stored example (every step); raises BadInputError(reason,
    message) for one that cannot be used."""
    conv = synthesised(uid, turns, n, ctx)
    return laid_out(uid, conv, tokenize(conv, ctx), ctx, keep_audio)


def entries_per_split(dialogues: dict[str, list]) -> dict[str, list]:
    """{split: [(id, turns or Rejected)]} -> {split: [(id, turns or Rejected, n)]}: n counts
    the usable dialogues before it in its split, so that seeds do not depend on rejected
    ones (nor on which process builds the dialogue)."""
    entries = {}
    for split, items in dialogues.items():
        n, entries[split] = 0, []
        for uid, turns in items:
            n += not isinstance(turns, Rejected)
            entries[split].append((uid, turns, n))
    return entries


class OmniflattenDialogues(common.RecipeBuilder):
    VERSION = tfds.core.Version("1.6.0")  # bump when examples change: part of the cache key
    PROGRESS_EVERY = 500

    def _info(self):
        def tensor(dtype):
            return tfds.features.Tensor(shape=(None,), dtype=dtype,
                                        encoding=tfds.features.Encoding.ZLIB)

        features = {k: tensor(np.int32) for k in records.INT_FIELDS}
        features |= {k: tensor(np.int16) for k in records.AUDIO_FIELDS}
        features |= {k: tfds.features.Text() for k in records.TEXT_FIELDS}
        features["snr_db"] = tfds.features.Scalar(np.float32)
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features))


def build(data_dir: str, config_name: str, dialogues, context: DialogueContext,
          runner=None) -> dict:
    """Writes the dataset once per `config_name`, here or on a Beam `runner`; returns its
    report (counts per split and reason, and the first skipped dialogues' messages).
    `dialogues`: {split: [(id, turns or Rejected)]}, as `synth.dialogues.dialogue_entries`
    gives them."""
    report_path = epath.Path(data_dir) / NAME / config_name / "build_report.json"
    if report_path.exists():
        return json.loads(report_path.read_text())
    tally = common.build(OmniflattenDialogues, data_dir, config_name, context,
                         entries_per_split(dialogues), runner)
    summary = {f"{split}/{what}": count for (split, what), count in sorted(tally.counts.items())}
    if tally.first:
        summary["first_skipped"] = tally.messages()
    report_path.write_text(json.dumps(summary, indent=2))  # last: marks it finished
    return summary


def data_source(data_dir: str, config_name: str, split: str, layout: TokenLayout):
    return common.data_source(NAME, data_dir, config_name, split, layout)
