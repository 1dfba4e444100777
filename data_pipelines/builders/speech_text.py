"""TFDS builder of speech-text pairs: token ids for training, audio for the test split only.

Each example holds the transcript's text ids, the ASR input's speech ids (the user's voice),
the TTS target's speech ids, and (test split only) the ASR input audio as int16. Ids follow
the token layout saved beside the dataset. Every utterance goes through the same steps
(`BuildContext.steps`: check text, read and check audio, tokenise), in one process or as Beam
transforms (`builders.recipe`); a bad one is skipped and counted in the build report by split
and reason, or stops the build, by `DataConfig.on_bad_input`. Entries the corpus
reader rejected (a manifest line with bad fields or a duplicate id) are counted the same way.
With `DataConfig.check_speech_activity`, audio with no speech in it (silence, a steady tone or
square wave, DC) or with impossible sample values is a bad input too (`speech.activity`).
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines.builders import common, recipe
from data_pipelines.corpus import SPLITS, BadInputError, Item, start_afresh_if_synthesised
from omniflatten_jax.config import DataConfig
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.speech.activity import speech_problem
from omniflatten_jax.speech.audio import AudioError
from omniflatten_jax.speech.tokenizer import SpeechTokenizer
from omniflatten_jax.tokens.text_tokenizers import text_tokenizer
from omniflatten_jax.tokens.transcripts import (
    clean_transcript,
    normalize_transcript,
    wrong_script,
)

log = logging.getLogger(__name__)

NAME = "omniflatten_speech_text"
MARKERS = 6  # [ASR][SOS] ... [EOS][SOT] ... [EOT] (and the TTS order): six marker tokens


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """The settings every example is built with, and the steps that build it (a `Recipe`)."""

    tokenizer: SpeechTokenizer
    layout: TokenLayout
    data: DataConfig
    seq_len: int
    # Normalised transcripts of the train split that a held-out utterance repeats (the
    # train texts that also occur in validation or test): such held-out utterances are
    # dropped, so that evaluation measures recognition, not recall of a training text.
    train_texts: frozenset[str] = frozenset()
    tokenizer_path: str | None = None  # where `tokenizer` was read: what Beam workers get

    steps = ("check text", "read and check audio", "tokenise")

    def __reduce_ex__(self, protocol):
        return recipe.reduce_with_tokenizer_file(self) or super().__reduce_ex__(protocol)

    def step(self, name: str, split: str, state):
        if name == "check text":
            return state, checked_text(state, self, held_out=split != "train")
        if name == "read and check audio":
            item, text = state
            return (item, text, *checked_audio(item, text, self))
        item, text, wave, tts_wave = state
        return tokenized(item, text, wave, tts_wave, self, keep_audio=split == "test")

    def stops(self, state, reason: str) -> bool:
        # A held-out utterance repeating a train transcript is expected, not the user's error.
        return self.data.on_bad_input == "stop" and reason != "text_seen_in_train"

    def skip_key(self, reason: str) -> str:
        return reason

    def kept_keys(self, example: dict) -> list[str]:
        return ["kept"]


def held_out_repeats(items: dict[str, list[Item]]) -> frozenset[str]:
    """`BuildContext.train_texts` for a corpus: the normalised train transcripts that a
    validation or test utterance repeats (small, whatever the corpus' size)."""
    held_out = {normalize_transcript(item.text) for split in ("validation", "test")
                for item in items.get(split, ())}
    return frozenset(text for text in (normalize_transcript(item.text)
                                       for item in items.get("train", ())) if text in held_out)


def _where(item: Item, audio) -> str:
    """How messages name an utterance: its id and its audio file."""
    return f"{item.id} ({getattr(audio, 'path', 'synthesised')})"


def check_activity(wave: np.ndarray, rate: int, where: str, what: str) -> None:
    """Raises BadInputError("no_speech" | "bad_amplitude") for audio that cannot be speech."""
    found = speech_problem(wave, rate)
    if found:
        reason, why = found
        raise BadInputError(reason, f"{where}: {what} audio: {why}. Check the file, or set "
                            "data.check_speech_activity=false if it is speech after all")


def checked_text(item: Item, ctx: BuildContext, held_out: bool) -> str:
    """The utterance's transcript as trained; raises BadInputError(reason, message) for a
    rejected entry or an unusable transcript. `held_out`: the utterance is in validation or
    test, where a transcript of the train split is not allowed."""
    if item.problem:
        raise BadInputError(*item.problem)
    cfg = ctx.data
    text = normalize_transcript(item.text) if cfg.normalize_text else clean_transcript(item.text)
    where = _where(item, item.audio)
    if not text:
        raise BadInputError("empty_text", f"{where}: the transcript is empty")
    why = wrong_script(text, cfg.language, "data.language")
    if why:
        raise BadInputError("wrong_script", f"{where}: the transcript {why}: the text and its "
                            "recording disagree; fix the line, or set data.language to the "
                            "recordings' language")
    if held_out and normalize_transcript(item.text) in ctx.train_texts:
        raise BadInputError("text_seen_in_train", f"{where}: the transcript {text[:40]!r} "
                            "also occurs in the train split")
    if len(text) > cfg.max_text_chars:
        raise BadInputError("text_too_long", f"{where}: {len(text)} characters > "
                            f"data.max_text_chars={cfg.max_text_chars}")
    return text


def checked_audio(item: Item, text: str, ctx: BuildContext) -> tuple[np.ndarray, np.ndarray]:
    """The ASR input and TTS target waves at the tokenizer's rate, checked to be speech of
    a plausible length for `text`."""
    cfg, rate = ctx.data, ctx.tokenizer.sample_rate
    where = _where(item, item.audio)
    start_afresh_if_synthesised(item)
    try:
        wave = item.audio.load(rate, cfg.min_audio_seconds)
        tts_wave = (wave if item.tts_audio == item.audio
                    else item.tts_audio.load(rate, cfg.min_audio_seconds))
    except AudioError as e:
        raise BadInputError("bad_audio", f"{item.id}: {e}") from None
    if cfg.check_speech_activity:
        check_activity(wave, rate, where, "ASR input")
        if tts_wave is not wave:
            check_activity(tts_wave, rate, _where(item, item.tts_audio), "TTS target")
    seconds = len(wave) / rate
    if seconds > cfg.max_audio_seconds:
        raise BadInputError("audio_too_long", f"{where}: {seconds:.1f} s > "
                            f"data.max_audio_seconds={cfg.max_audio_seconds}")
    chars_per_s = len(text) / seconds
    lo, hi = cfg.chars_per_second
    if not lo <= chars_per_s <= hi:
        raise BadInputError("transcript_mismatch",
                            f"{where}: {chars_per_s:.1f} characters per second of audio lies "
                            f"outside data.chars_per_second={cfg.chars_per_second}: the "
                            "transcript does not match its audio")
    return wave, tts_wave


def tokenized(item: Item, text: str, wave: np.ndarray, tts_wave: np.ndarray,
              ctx: BuildContext, keep_audio: bool) -> dict:
    """The stored example: text and speech ids (checked to fit a row), audio if kept."""
    rate = ctx.tokenizer.sample_rate
    text_ids = np.asarray(text_tokenizer(ctx.layout).encode(text), np.int32)
    speech_ids = ctx.layout.speech_ids(ctx.tokenizer.encode(wave, rate))
    tts_ids = ctx.layout.speech_ids(ctx.tokenizer.encode(tts_wave, rate))
    longest = MARKERS + len(text_ids) + max(len(speech_ids), len(tts_ids))
    if longest > ctx.seq_len:
        raise BadInputError("longer_than_context", f"{_where(item, item.audio)}: {longest} "
                            f"tokens > train.seq_len={ctx.seq_len}")
    audio = (np.clip(wave, -1, 1) * 32767).astype(np.int16) if keep_audio else np.zeros(0, np.int16)
    return {"id": item.id, "text": text, "speaker": item.speaker, "text_ids": text_ids,
            "speech_ids": speech_ids, "tts_speech_ids": tts_ids, "audio": audio}


def make_example(item: Item, ctx: BuildContext, keep_audio: bool,
                 held_out: bool = False) -> dict:
    """One checked example (every step); raises BadInputError(reason, message) naming the
    utterance."""
    text = checked_text(item, ctx, held_out)
    return tokenized(item, text, *checked_audio(item, text, ctx), ctx, keep_audio)


class OmniflattenSpeechText(common.RecipeBuilder):
    VERSION = tfds.core.Version("1.4.0")  # bump when examples change: part of the cache key

    # One BuilderConfig per cache key (see `build`): a new corpus, tokenizer or layout is a new
    # config, so a changed setting can never reuse stale tokens.
    def _info(self):
        tensor = lambda dtype: tfds.features.Tensor(  # noqa: E731
            shape=(None,), dtype=dtype, encoding=tfds.features.Encoding.ZLIB)
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(), "text": tfds.features.Text(),
            "speaker": tfds.features.Text(), "text_ids": tensor(np.int32),
            "speech_ids": tensor(np.int32), "tts_speech_ids": tensor(np.int32),
            "audio": tensor(np.int16)}))


def report_of(tally: recipe.Tally) -> dict:
    """build_report.json: kept per split, skipped per split and reason, first messages."""
    kept = {s: n for (s, what), n in tally.counts.items() if what == "kept"}
    return {"kept": {s: kept[s] for s in SPLITS if s in kept},
            "skipped": {f"{s}/{what}": n for (s, what), n in sorted(tally.counts.items())
                        if what != "kept"},
            "first_skipped": tally.messages()}


def build(data_dir: str, config_name: str, items: dict[str, list[Item]],
          context: BuildContext, runner=None) -> dict:
    """Writes the dataset once per `config_name` (the cache key), here or on a Beam `runner`
    (`runners.Runner`); returns the build report."""
    report_path = epath.Path(data_dir) / NAME / config_name / "build_report.json"
    if report_path.exists():
        return json.loads(report_path.read_text())
    tally = common.build(OmniflattenSpeechText, data_dir, config_name, context, items, runner)
    report = report_of(tally)
    report_path.write_text(json.dumps(report, indent=2))  # last: marks it finished
    return report


def data_source(data_dir: str, config_name: str, split: str, layout: TokenLayout):
    return common.data_source(NAME, data_dir, config_name, split, layout)
