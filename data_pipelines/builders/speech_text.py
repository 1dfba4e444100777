"""TFDS builder of speech-text pairs: token ids for training, audio for the test split only.

Each example holds the transcript's text ids, the ASR input's speech ids (the user's voice),
the TTS target's speech ids, and (test split only) the ASR input audio as int16. Ids follow
the token layout saved beside the dataset. Every utterance is checked (`make_example`, the
one place the per-utterance logic lives); a bad one is skipped and counted in the build report
by split and reason, or stops the build, by `DataConfig.on_bad_input`. Entries the corpus
reader rejected (a manifest line with bad fields or a duplicate id) are counted the same way.
With `DataConfig.check_speech_activity`, audio with no speech in it (silence, a steady tone or
square wave, DC) or with impossible sample values is a bad input too (`speech.activity`).
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
from data_pipelines.corpus import BadInputError, Item, stop_error
from omniflatten_jax.config import DataConfig
from omniflatten_jax.speech.activity import speech_problem
from omniflatten_jax.speech.audio import AudioError
from omniflatten_jax.speech.tokenizer import SpeechTokenizer
from omniflatten_jax.transcripts import normalize_transcript
from omniflatten_jax.vocab import TokenLayout

log = logging.getLogger(__name__)

NAME = "omniflatten_speech_text"
MARKERS = 6  # [ASR][SOS] ... [EOS][SOT] ... [EOT] (and the TTS order): six marker tokens


@dataclasses.dataclass
class BuildReport:
    kept: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        return {"kept": dict(self.kept), "skipped": {f"{s}/{r}": n for (s, r), n
                                                     in sorted(self.skipped.items())},
                "first_skipped": self.examples[:50]}


@dataclasses.dataclass(frozen=True)
class BuildContext:
    tokenizer: SpeechTokenizer
    layout: TokenLayout
    data: DataConfig
    seq_len: int
    # Normalised transcripts of the train split: held-out utterances that repeat one of them
    # are dropped, so that evaluation measures recognition, not recall of a training text.
    train_texts: frozenset[str] = frozenset()


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


def make_example(item: Item, ctx: BuildContext, keep_audio: bool,
                 held_out: bool = False) -> dict:
    """One checked example; raises BadInputError(reason, message) naming the utterance.
    `held_out`: the utterance is in validation or test, where a transcript of the train split
    is not allowed."""
    if item.problem:
        raise BadInputError(*item.problem)
    cfg, rate = ctx.data, ctx.tokenizer.sample_rate
    text = normalize_transcript(item.text) if cfg.normalize_text else item.text.strip()
    where = _where(item, item.audio)
    if not text:
        raise BadInputError("empty_text", f"{where}: the transcript is empty")
    if held_out and normalize_transcript(item.text) in ctx.train_texts:
        raise BadInputError("text_seen_in_train", f"{where}: the transcript {text[:40]!r} "
                            "also occurs in the train split")
    if len(text) > cfg.max_text_chars:
        raise BadInputError("text_too_long", f"{where}: {len(text)} characters > "
                            f"data.max_text_chars={cfg.max_text_chars}")
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
    text_ids = np.asarray(ctx.layout.tokenizer().encode(text), np.int32)
    speech_ids = ctx.layout.speech_ids(ctx.tokenizer.encode(wave, rate))
    tts_ids = ctx.layout.speech_ids(ctx.tokenizer.encode(tts_wave, rate))
    longest = MARKERS + len(text_ids) + max(len(speech_ids), len(tts_ids))
    if longest > ctx.seq_len:
        raise BadInputError("longer_than_context", f"{where}: {longest} tokens > "
                            f"train.seq_len={ctx.seq_len}")
    audio = (np.clip(wave, -1, 1) * 32767).astype(np.int16) if keep_audio else np.zeros(0, np.int16)
    return {"id": item.id, "text": text, "speaker": item.speaker, "text_ids": text_ids,
            "speech_ids": speech_ids, "tts_speech_ids": tts_ids, "audio": audio}


class OmniflattenSpeechText(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.2.0")  # bump when examples change: part of the cache key

    # One BuilderConfig per cache key (see `build`): a new corpus, tokenizer or layout is a new
    # config, so a changed setting can never reuse stale tokens.
    def __init__(self, *, items: dict[str, list[Item]] | None = None,
                 context: BuildContext | None = None, report: BuildReport | None = None, **kw):
        self._items, self._context, self._report = items, context, report
        super().__init__(**kw)

    def _info(self):
        tensor = lambda dtype: tfds.features.Tensor(  # noqa: E731
            shape=(None,), dtype=dtype, encoding=tfds.features.Encoding.ZLIB)
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(), "text": tfds.features.Text(),
            "speaker": tfds.features.Text(), "text_ids": tensor(np.int32),
            "speech_ids": tensor(np.int32), "tts_speech_ids": tensor(np.int32),
            "audio": tensor(np.int16)}))

    def _split_generators(self, dl_manager):
        return common.non_empty_splits(self._generate_examples, self._items)

    def _generate_examples(self, split, items):
        ctx, report = self._context, self._report
        start = time.perf_counter()
        for n, item in enumerate(items, 1):
            try:
                example = make_example(item, ctx, keep_audio=split == "test",
                                       held_out=split != "train")
            except BadInputError as e:
                reason, message = e.args
                if ctx.data.on_bad_input == "stop" and reason != "text_seen_in_train":
                    raise stop_error(message) from None
                report.skipped[(split, reason)] += 1
                if reason != "text_seen_in_train":  # expected, not a problem to look at
                    report.examples.append(message)
                continue
            report.kept[split] += 1
            yield item.id, example
            if n % 1000 == 0:
                log.info("  %s: %d/%d utterances (%.0f/s)", split, n, len(items),
                                n / (time.perf_counter() - start))


def build(data_dir: str, config_name: str, items, context: BuildContext) -> BuildReport:
    """Writes the dataset once per `config_name` (the cache key); returns the build report."""
    report_path = epath.Path(data_dir) / NAME / config_name / "build_report.json"
    if report_path.exists():
        saved = json.loads(report_path.read_text())
        report = BuildReport()
        report.kept.update(saved["kept"])
        return report
    report = BuildReport()
    tfds.disable_progress_bar()  # our own progress lines are in the log
    config = tfds.core.BuilderConfig(name=config_name)
    builder = OmniflattenSpeechText(items=items, context=context, report=report, data_dir=data_dir,
                         config=config, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        verify_ssl=False))
    context.layout.save(os.path.join(data_dir, NAME, config_name))
    report_path.write_text(json.dumps(report.to_json(), indent=2))  # last: marks it finished
    return report


def data_source(data_dir: str, config_name: str, split: str, layout: TokenLayout):
    return common.data_source(NAME, data_dir, config_name, split, layout)
