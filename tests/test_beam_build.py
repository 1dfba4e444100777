"""Datasets built by Apache Beam (DirectRunner, 2 worker processes) equal the single-process
build: the same records, report and fingerprint, bad inputs counted (or stopped on) the same
way, and readable by `tfds.data_source` in a process that never imported Beam."""

import ast
import dataclasses
import json
import logging
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines.builders import speech_text
from data_pipelines.corpus import BadInputError
from data_pipelines.prepare import prepare_dialogues, prepare_speech_text
from data_pipelines.runners import AUTO_BEAM_MIN_ENTRIES, Runner
from omniflatten_jax.config import override
from tests.helpers import small_config

BEAM = Runner("direct", ("--direct_num_workers=2",))


def records(prepared, name: str) -> dict:
    """{split: {id: {feature: bytes}}}: every record, independent of order."""
    out = {}
    for split in ("train", "validation", "test"):
        try:
            source = tfds.data_source(f"{name}/{prepared.config_name}",
                                      data_dir=prepared.data_dir, split=split)
        except Exception:  # noqa: BLE001 - a split the build left out (both must lack it)
            continue
        out[split] = {r["id"]: {k: np.asarray(v).tobytes() for k, v in r.items()}
                      for r in (source[i] for i in range(len(source)))}
    return out


def beam_metrics(caplog) -> dict:
    line = next(r.getMessage() for r in caplog.records if "Beam metrics" in r.getMessage())
    return ast.literal_eval(line.split(": ", 1)[1])  # the logged dict


def build_both(cfg, tmp_path, prepare, caplog):
    """`prepare` in one process, then on Beam in a second workdir holding the same speech
    tokenizer file (fitted once, as a cluster build ships it)."""
    local = prepare(cfg, str(tmp_path / "local"), Runner("local"))
    (tmp_path / "beam" / "data").mkdir(parents=True, exist_ok=True)
    for tokenizer in (tmp_path / "local" / "data").glob("speech_tokenizer-*.npz"):
        shutil.copy(tokenizer, tmp_path / "beam" / "data" / tokenizer.name)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="data_pipelines.beam_build"):
        beam = prepare(cfg, str(tmp_path / "beam"), BEAM)
    return local, beam, beam_metrics(caplog)


@pytest.fixture(scope="module")
def embedded_cfg():
    cfg = small_config("embedded")
    for setting in ("data.max_utterances=160", "dialogue.max_dialogues=24",
                    "speech.fit_max_utterances=40", "data.max_text_chars=100",
                    "flatten.text_chunk=8", "dialogue_train.seq_len=512"):
        cfg = override(cfg, setting)
    return cfg


def test_the_beam_build_of_the_embedded_corpus_equals_the_single_process_build(
        embedded_cfg, tmp_path, caplog):
    built = {}
    for prepare, name in ((prepare_speech_text, speech_text.NAME),
                          (prepare_dialogues, "omniflatten_dialogues")):
        local, beam, metrics = build_both(embedded_cfg, tmp_path / name, prepare, caplog)
        built[name] = local
        assert beam.config_name == local.config_name  # one cache key, whichever runner
        assert beam.report == local.report
        assert beam.fingerprint == local.fingerprint
        expected = records(local, name)
        assert sum(len(v) for v in expected.values()) > 10
        assert records(beam, name) == expected
        # Beam's metrics count what the report counts.
        counted = {k: v for k, v in local.report.items() if k != "first_skipped"}
        if name == speech_text.NAME:
            counted = {f"{s}/kept": n for s, n in local.report["kept"].items()}
            counted |= local.report["skipped"]
        assert metrics == counted
    # A later run (single process) reuses the Beam-built dataset instead of building again.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="data_pipelines.prepare"):
        again = prepare_speech_text(embedded_cfg, str(tmp_path / speech_text.NAME / "beam"))
    assert not any("building" in r.getMessage() for r in caplog.records)
    assert again.fingerprint == built[speech_text.NAME].fingerprint
    # Read where Beam was never imported.
    reader = ("import sys, tensorflow_datasets as tfds; "
              f"s = tfds.data_source('{speech_text.NAME}/{again.config_name}', "
              f"data_dir='{again.data_dir}', split='train'); n = len(s); s[0]; "
              "assert 'apache_beam' not in sys.modules; print(n)")
    out = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True,
                         check=True).stdout
    assert int(out.strip().splitlines()[-1]) == again.report["kept"]["train"]


def test_bad_inputs_are_counted_the_same_by_a_beam_build(messy_manifest, tmp_path, caplog):
    """Every kind of bad input, plus a split (validation) whose only entry is bad: TFDS's Beam
    writer refuses an empty split, so it is counted in a second pass and left out, as the
    single-process build leaves it out."""
    manifest = tmp_path / "manifest.jsonl"
    lines = messy_manifest.read_text().splitlines()
    lines = [re.sub(r'"audio": "(?!/)', f'"audio": "{messy_manifest.parent}/', line)
             for line in lines]
    lines.append(json.dumps({"id": "lonely", "audio": "nowhere.wav", "text": "hello",
                             "split": "validation"}))
    manifest.write_text("\n".join(lines) + "\n")
    cfg = small_config(f"manifest:{manifest}")
    local, beam, metrics = build_both(cfg, tmp_path, prepare_speech_text, caplog)
    assert local.report["skipped"]["validation/bad_audio"] == 1
    assert "validation" not in local.report["kept"]
    assert beam.report == local.report and beam.fingerprint == local.fingerprint
    assert records(beam, speech_text.NAME) == records(local, speech_text.NAME)
    assert metrics["train/bad_audio"] == 3 and metrics["validation/bad_audio"] == 1


def test_a_beam_build_stops_on_a_bad_input_naming_it(messy_manifest, tmp_path):
    cfg = override(small_config(f"manifest:{messy_manifest}"), "data.on_bad_input=stop")
    # Workers fail in parallel: whichever bad file stopped the build first is named.
    with pytest.raises(BadInputError, match=r"(corrupt|empty|missing)\.wav.*on_bad_input=skip"
                       ) as e:
        prepare_speech_text(cfg, str(tmp_path), BEAM)
    assert "\n" not in str(e.value)  # one line, not the workers' tracebacks
    assert not list((tmp_path / "data" / "tfds").glob(f"{speech_text.NAME}/*/build_report.json"))


def test_auto_builds_small_corpora_in_one_process_and_large_ones_on_beam():
    assert Runner().for_entries(AUTO_BEAM_MIN_ENTRIES - 1).local
    assert Runner().for_entries(AUTO_BEAM_MIN_ENTRIES) == Runner("direct")
    assert Runner("local").for_entries(10**6).local
    with pytest.raises(ValueError, match="need a Beam runner"):
        Runner("local", ("--direct_num_workers=4",))
    assert "--direct_num_workers=4" in Runner("direct", ("--direct_num_workers=4",)
                                              ).pipeline_args()


def test_a_beam_worker_gets_the_tokenizer_as_a_file(embedded_cfg, tmp_path):
    """A context pickles its tokenizer's path, not the tokenizer: workers read the file."""
    import pickle

    from omniflatten_jax.speech.kmeans import KMeansMelTokenizer

    rng = np.random.default_rng(0)
    tok = KMeansMelTokenizer.fit([rng.normal(size=16_000).astype(np.float32) * 0.1],
                                 embedded_cfg.speech.mel, 8, 0)
    path = str(tmp_path / "tok.npz")
    tok.save(path)
    ctx = speech_text.BuildContext(tok, embedded_cfg.layout, embedded_cfg.data, 256,
                                   tokenizer_path=path)
    blob = pickle.dumps(ctx)
    assert len(blob) < len(pickle.dumps(dataclasses.replace(ctx, tokenizer_path=None)))
    back = pickle.loads(blob)
    assert back.tokenizer_path == path
    wave = rng.normal(size=8000).astype(np.float32) * 0.1
    np.testing.assert_array_equal(back.tokenizer.encode(wave, 16_000), tok.encode(wave, 16_000))


def test_synthesis_does_not_depend_on_what_was_spoken_before():
    """Beam workers each speak a different part of a corpus: an utterance must come out the
    same whatever its process spoke before (eSpeak kept state across utterances)."""
    import ctypes

    from data_pipelines.synth.espeak import Synthesizer, Voice

    synth, voice = Synthesizer(), Voice("en+f3", 180, 60)  # a breathy variant: uses rand()
    Synthesizer.start_afresh()
    first = synth.speak("hello there how are you", voice).audio
    synth.speak("something else entirely, at some length", Voice("en-us", 140, 30))
    for _ in range(7):
        ctypes.CDLL(None).rand()  # rand() is process-wide: others may draw from it
    assert not np.array_equal(synth.speak("hello there how are you", voice).audio, first)
    Synthesizer.start_afresh()
    np.testing.assert_array_equal(synth.speak("hello there how are you", voice).audio, first)
