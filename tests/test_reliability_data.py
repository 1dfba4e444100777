"""Prepared data is keyed by its inputs' content: a changed input rebuilds (saying why), and a
failed build leaves nothing that passes as a dataset."""

import dataclasses
import json
import logging
import os
import shutil

import pytest
from helpers import small_config

from data_pipelines.builders.speech_text import NAME, BadInputError
from data_pipelines.prepare import prepare_speech_text


def _manifest(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _kept(prepared) -> int:
    return sum(prepared.report["kept"].values())


def test_an_edited_manifest_or_touched_audio_rebuilds_and_says_why(spoken_corpus, tmp_path,
                                                                  caplog):
    root, _, rows = spoken_corpus
    corpus = tmp_path / "corpus"
    shutil.copytree(root, corpus)
    manifest = _manifest(corpus / "m.jsonl", rows[:8])
    cfg = small_config(f"manifest:{manifest}")
    caplog.set_level(logging.INFO, logger="data_pipelines")
    first = prepare_speech_text(cfg, str(tmp_path / "w"))
    assert "no earlier build of manifest:" in caplog.text
    assert prepare_speech_text(cfg, str(tmp_path / "w")).config_name == first.config_name

    caplog.clear()
    _manifest(manifest, rows)  # the same path, twice the utterances
    second = prepare_speech_text(cfg, str(tmp_path / "w"))
    assert second.config_name != first.config_name
    assert f"since {first.config_name}: 1 changed (m.jsonl); 8 added" in caplog.text
    assert _kept(second) > _kept(first)

    caplog.clear()
    audio = corpus / rows[0]["audio"]
    os.utime(audio, ns=(audio.stat().st_atime_ns, audio.stat().st_mtime_ns + 10**9))
    third = prepare_speech_text(cfg, str(tmp_path / "w"))
    assert third.config_name != second.config_name
    assert f"1 changed ({rows[0]['audio']})" in caplog.text


def test_a_failed_build_leaves_nothing_and_the_fixed_input_builds(spoken_corpus, tmp_path):
    root, _, rows = spoken_corpus
    corpus = tmp_path / "corpus"
    shutil.copytree(root, corpus)
    bad = rows[:6] + [{"id": "gone", "audio": "missing.wav", "text": "hello there"}]
    manifest = _manifest(corpus / "m.jsonl", bad)
    cfg = small_config(f"manifest:{manifest}")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, on_bad_input="stop"))
    workdir = tmp_path / "w"
    with pytest.raises(BadInputError, match="missing.wav"):
        prepare_speech_text(cfg, str(workdir))
    tfds_dir = workdir / "data" / "tfds"
    assert not (tfds_dir / NAME).exists() or not os.listdir(tfds_dir / NAME)
    assert not [p for p in os.listdir(tfds_dir) if p.startswith(".staging")]

    _manifest(manifest, rows[:6])  # fixed: the next run builds, no stale error
    prepared = prepare_speech_text(cfg, str(workdir))
    assert _kept(prepared) > 0
    folder = tfds_dir / NAME / prepared.config_name
    assert json.loads((folder / "inputs.json").read_text())["source"] == f"manifest:{manifest}"
