"""TFDS builder of simulated spoken dialogues: token streams, turn times and word times.

Per dialogue: both channels as speech ids per frame (the assistant channel holds
<silent_speech> where the assistant is silent), each turn's role, start/end frames, text ids
and the frame at which each text token's word starts (the synthesiser's word times; the
chunking uses them for user text only), and the pattern at each turn change. The test split
also keeps both channels' audio (int16), so that turn-taking can be evaluated and heard.

Nothing is dropped silently: a dialogue that cannot be used (a `Rejected` entry of
`synth.dialogues.dialogue_entries`, one left with no assistant turn by cleaning, or one that
cannot be laid out for every planned stage) is counted in build_report.json as
``<split>/skipped_<reason>``, with the first messages under ``first_skipped``. Under
``data.on_bad_input=stop`` (`DialogueContext.on_bad_input`) a problem of the user's dialogue
file stops the build naming file and line; layout problems follow from the stage settings
and are always counted.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import time

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines.builders import common
from data_pipelines.corpus import BadInputError, check_policy, stop_error
from data_pipelines.dialogue_examples import ROLES, assistant_text_lag, stage_examples
from data_pipelines.synth import voices
from data_pipelines.synth.conversation import Conversation, SimulatedTurn, simulate
from data_pipelines.synth.dialogues import Rejected, TextDialogue, clean_dialogue
from omniflatten_jax.chunking import TextOverflowError
from omniflatten_jax.config import DialogueConfig
from omniflatten_jax.speech.tokenizer import SpeechTokenizer
from omniflatten_jax.stages import StagePlan
from omniflatten_jax.vocab import TokenLayout

log = logging.getLogger(__name__)

NAME = "omniflatten_dialogues"
FIRST_SKIPPED = 50  # messages kept in the report


@dataclasses.dataclass(frozen=True)
class DialogueContext:
    tokenizer: SpeechTokenizer
    layout: TokenLayout
    cfg: DialogueConfig
    seed: int
    plans: tuple[StagePlan, ...]  # every dialogue stage the dataset must serve
    normalize_text: bool = True
    on_bad_input: str = "skip"  # data.on_bad_input: "stop" on a problem of the user's file

    def __post_init__(self):
        check_policy(self.on_bad_input)


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
    tok = layout.tokenizer()
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
    text_tok = layout.tokenizer()
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
            "boundaries": ",".join(conv.boundaries), "snr_db": np.float32(conv.snr_db)}


def make_example(uid: str, turns: TextDialogue | Rejected, ctx: DialogueContext,
                 n: int, keep_audio: bool) -> tuple[dict, Conversation]:
    """One dialogue -> (the stored example, its simulated conversation); raises
    BadInputError(reason, message) for one that cannot be used. `n` (the dialogue's place
    among the usable ones of its split) seeds its voices and timing."""
    if isinstance(turns, Rejected):
        raise BadInputError(turns.reason, turns.message)
    turns = clean_dialogue(turns, ctx.cfg, ctx.normalize_text, f"dialogue {uid}")
    rng = np.random.default_rng([ctx.seed, n, len(uid)])
    conv = simulate(turns, voices.user_voice(ctx.cfg.language, rng),
                    voices.assistant_voice(ctx.cfg.language), ctx.cfg.simulation, rng,
                    ctx.tokenizer.sample_rate)
    example = tokenize(conv, ctx)
    reason = problem(example, ctx)
    if reason:
        raise BadInputError(reason, f"dialogue {uid}: {reason.replace('_', ' ')} "
                            "(see the stage settings: flatten, dialogue_train.seq_len)")
    for channel in ("user", "assistant"):
        audio = getattr(conv, f"{channel}_audio")
        example[f"{channel}_audio"] = ((audio * 32767).astype(np.int16) if keep_audio
                                       else np.zeros(0, np.int16))
    example["id"] = uid
    return example, conv


class OmniflattenDialogues(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.2.0")  # bump when examples change: part of the cache key

    def __init__(self, *, dialogues=None, context: DialogueContext | None = None,
                 report: collections.Counter | None = None, skipped: list | None = None,
                 **kw):
        self._dialogues, self._context, self._report = dialogues, context, report
        self._skipped = skipped if skipped is not None else []  # the first messages
        super().__init__(**kw)

    def _info(self):
        def tensor(dtype):
            return tfds.features.Tensor(shape=(None,), dtype=dtype,
                                        encoding=tfds.features.Encoding.ZLIB)

        ints = ("user_speech", "assistant_speech", "turn_roles", "turn_starts", "turn_ends",
                "turn_text_lengths", "text_ids", "token_frames")
        features = {k: tensor(np.int32) for k in ints}
        features |= {"user_audio": tensor(np.int16), "assistant_audio": tensor(np.int16),
                     "id": tfds.features.Text(), "boundaries": tfds.features.Text(),
                     "snr_db": tfds.features.Scalar(np.float32)}
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return common.non_empty_splits(self._generate_examples, self._dialogues)

    def _generate_examples(self, split, dialogues):
        ctx = self._context
        start = time.perf_counter()
        n = 0  # usable dialogues so far: their seeds do not depend on rejected ones
        for i, (uid, turns) in enumerate(dialogues, 1):
            n += not isinstance(turns, Rejected)
            try:
                example, conv = make_example(uid, turns, ctx, n, keep_audio=split == "test")
            except BadInputError as e:
                self._skip(split, turns, *e.args)
                continue
            self._report[(split, "kept")] += 1
            for pattern in conv.boundaries:
                self._report[(split, pattern)] += 1
            yield uid, example
            if i % 500 == 0:
                log.info("  %s: %d/%d dialogues (%.0f/s)", split, i, len(dialogues),
                         i / (time.perf_counter() - start))

    def _skip(self, split: str, turns, reason: str, message: str) -> None:
        """Counts a dialogue that cannot be used, or stops on a problem of the user's file."""
        if (self._context.on_bad_input == "stop" and isinstance(turns, Rejected)
                and turns.bad_input):
            raise stop_error(message)
        self._report[(split, f"skipped_{reason}")] += 1
        if len(self._skipped) < FIRST_SKIPPED:
            self._skipped.append(message)


def build(data_dir: str, config_name: str, dialogues, context: DialogueContext) -> dict:
    """Writes the dataset once per `config_name`; returns its report (counts per split and
    reason, and the first skipped dialogues' messages). `dialogues`: {split: [(id, turns or
    Rejected)]}, as `synth.dialogues.dialogue_entries` gives them."""
    folder = os.path.join(data_dir, NAME, config_name)
    report_path = epath.Path(folder) / "build_report.json"
    if report_path.exists():
        return json.loads(report_path.read_text())
    report: collections.Counter = collections.Counter()
    skipped: list[str] = []
    tfds.disable_progress_bar()
    builder = OmniflattenDialogues(dialogues=dialogues, context=context, report=report,
                                   skipped=skipped, data_dir=data_dir,
                                   config=tfds.core.BuilderConfig(name=config_name),
                                   file_format="array_record")
    builder.download_and_prepare()
    context.layout.save(folder)
    summary = {f"{split}/{what}": count for (split, what), count in sorted(report.items())}
    if skipped:
        summary["first_skipped"] = skipped
    report_path.write_text(json.dumps(summary, indent=2))  # last: marks it finished
    return summary


def data_source(data_dir: str, config_name: str, split: str, layout: TokenLayout):
    return common.data_source(NAME, data_dir, config_name, split, layout)
