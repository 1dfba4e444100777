"""Corpora, the TFDS builder with bad-input handling, and the Grain alignment pipeline."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

from data_pipelines.builders.speech_text import BadInputError, data_source
from data_pipelines.corpus import librispeech_items
from data_pipelines.pipelines import alignment_pipeline
from data_pipelines.prepare import prepare_speech_text
from omniflatten_jax.config import DataConfig, override
from omniflatten_jax.model import transformer
from omniflatten_jax.tokens.batches import FIELD_DTYPES
from omniflatten_jax.tokens.sequence import Stream
from tests.helpers import small_config
from tests.sequence_parsing import parse_alignment


def test_bad_inputs_are_skipped_and_counted(messy_manifest, tmp_path):
    cfg = small_config(f"manifest:{messy_manifest}")
    prepared = prepare_speech_text(cfg, str(tmp_path))
    report = prepared.report
    assert report["kept"] == {"train": 12, "test": 4}
    assert report["skipped"] == {"train/bad_audio": 3, "train/transcript_mismatch": 1,
                                 "train/empty_text": 1}
    messages = " ".join(report["first_skipped"])
    for name in ("corrupt.wav", "empty.wav", "missing.wav", "mismatch", "blank"):
        assert name in messages
    source = data_source(prepared.data_dir, prepared.config_name, "train", cfg.layout)
    record = source[0]
    assert record["audio"].size == 0  # audio is kept for the test split only
    test_record = data_source(prepared.data_dir, prepared.config_name, "test", cfg.layout)[0]
    assert test_record["audio"].dtype == np.int16 and test_record["audio"].size > 1000
    # Built once: the second call reuses the dataset.
    again = prepare_speech_text(cfg, str(tmp_path))
    assert again.config_name == prepared.config_name


def test_bad_input_can_stop_the_build_with_a_clear_message(messy_manifest, tmp_path):
    cfg = override(small_config(f"manifest:{messy_manifest}"), "data.on_bad_input=stop")
    with pytest.raises(BadInputError, match="corrupt.*cannot be read.*on_bad_input=skip"):
        prepare_speech_text(cfg, str(tmp_path))


def test_too_long_examples_are_reported_not_truncated(spoken_corpus, tmp_path):
    _, manifest, _ = spoken_corpus
    cfg = override(small_config(f"manifest:{manifest}"), "train.seq_len=40")
    report = prepare_speech_text(cfg, str(tmp_path)).report
    assert report["skipped"].get("train/longer_than_context", 0) > 0
    assert "train.seq_len=40" in " ".join(report["first_skipped"])


def test_librispeech_layout(spoken_corpus, tmp_path):
    root, _, rows = spoken_corpus
    chapter = tmp_path / "103" / "1240"
    chapter.mkdir(parents=True)
    lines = []
    for i, r in enumerate(rows[:3]):
        uid = f"103-1240-{i:04d}"
        wave, rate = soundfile.read(root / r["audio"])
        soundfile.write(chapter / f"{uid}.flac", wave, rate)
        lines.append(f"{uid} {r['text'].upper()}")
    (chapter / "103-1240.trans.txt").write_text("\n".join(lines) + "\n")
    items = librispeech_items(str(tmp_path), DataConfig())
    everything = [it for split in items.values() for it in split]
    assert [it.id for it in everything] == ["103-1240-0000", "103-1240-0001", "103-1240-0002"]
    assert everything[0].text == rows[0]["text"].upper() and everything[0].speaker == "103"
    assert everything[0].audio.load(16_000, 0.1).size > 0
    with pytest.raises(FileNotFoundError, match="LibriSpeech layout"):
        librispeech_items(str(tmp_path / "103"), DataConfig())


@pytest.fixture(scope="module")
def dataset(spoken_corpus, tmp_path_factory):
    _, manifest, _ = spoken_corpus
    cfg = small_config(f"manifest:{manifest}")
    prepared = prepare_speech_text(cfg, str(tmp_path_factory.mktemp("work")))
    return cfg, data_source(prepared.data_dir, prepared.config_name, "train", cfg.layout)


def pipeline(cfg, source, **kw):
    args = dict(layout=cfg.layout, seq_len=cfg.train.seq_len, batch_size=4, asr_fraction=0.5,
                seed=7, num_packing_bins=4)
    return alignment_pipeline(source, **(args | kw))


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_pipeline_is_deterministic_and_resumes_exactly(dataset):
    cfg, source = dataset
    first = take(iter(pipeline(cfg, source)), 6)
    assert_same(first, take(iter(pipeline(cfg, source)), 6))
    it = iter(pipeline(cfg, source))
    take(it, 3)
    state = it.get_state()
    restored = iter(pipeline(cfg, source))
    restored.set_state(state)
    assert_same(take(restored, 3), first[3:])
    different = take(iter(pipeline(cfg, source, seed=8)), 2)
    assert any(not np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(first, different))


def test_pipeline_with_worker_processes_resumes_exactly(dataset):
    cfg, source = dataset
    expected = take(iter(pipeline(cfg, source)), 5)
    it = iter(pipeline(cfg, source, num_workers=1))
    try:
        assert_same(take(it, 2), expected[:2])
        state = json.loads(json.dumps(it.get_state()))  # as checkpoints store it
    finally:
        it.close()
    restored = iter(pipeline(cfg, source, num_workers=1))
    try:
        restored.set_state(state)
        assert_same(take(restored, 3), expected[2:])
    finally:
        restored.close()


def test_packed_rows_hold_whole_examples(dataset):
    cfg, source = dataset
    batch = next(iter(pipeline(cfg, source)))
    assert batch["tokens"].shape == (4, cfg.train.seq_len)
    row = 0
    segments = [s for s in np.unique(batch["segment_ids"][row]) if s]
    assert len(segments) >= 2  # short utterances are packed several to a row
    tasks = set()
    for s in segments:
        where = batch["segment_ids"][row] == s
        np.testing.assert_array_equal(batch["positions"][row][where], np.arange(where.sum()))
        task, speech, text = parse_alignment(cfg.layout, batch["tokens"][row][where])
        tasks.add(task)
        assert len(speech) and len(text)
    pad = batch["segment_ids"] == 0
    assert (batch["streams"][pad] == Stream.PAD).all() and not batch["loss_mask"][pad].any()
    assert {k: v.dtype for k, v in batch.items()} == {k: np.dtype(d)
                                                      for k, d in FIELD_DTYPES.items()}


def test_packed_logits_equal_unpacked_logits(dataset, on_one_device):
    cfg, source = dataset
    model = transformer(cfg.model, cfg.layout.vocab_size)
    params = model.init(jax.random.key(0))
    batch = next(iter(pipeline(cfg, source)))
    packed = model.logits(params, jnp.asarray(batch["tokens"]), jnp.asarray(batch["positions"]),
                          jnp.asarray(batch["segment_ids"]))
    for row in range(2):
        for s in [s for s in np.unique(batch["segment_ids"][row]) if s]:
            where = np.flatnonzero(batch["segment_ids"][row] == s)
            alone = model.logits(params, jnp.asarray(batch["tokens"][row][where])[None])
            np.testing.assert_allclose(packed[row, where], alone[0], atol=1e-5, rtol=0)


def test_asr_fraction_controls_the_mix(dataset):
    cfg, source = dataset
    for fraction, expected in ((1.0, {"asr"}), (0.0, {"tts"})):
        batch = next(iter(pipeline(cfg, source, asr_fraction=fraction)))
        tasks = set()
        for row in range(len(batch["tokens"])):
            for s in [s for s in np.unique(batch["segment_ids"][row]) if s]:
                where = batch["segment_ids"][row] == s
                tasks.add(parse_alignment(cfg.layout, batch["tokens"][row][where])[0])
        assert tasks == expected
    with pytest.raises(ValueError, match="asr_fraction"):
        dataclasses.replace(cfg.data, asr_fraction=1.5)
