"""Hostile inputs: every bad manifest line, dialogue line or recording is skipped and counted,
or stops the build naming file and line, by `data.on_bad_input`; nothing crashes obscurely,
nothing trains silently wrong, and real (synthesised) speech is never rejected."""

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
import soundfile

from data_pipelines.builders import dialogues as dialogue_builder
from data_pipelines.builders.speech_text import BadInputError, BuildContext, make_example
from data_pipelines.corpus import embedded_items, manifest_items, speech_text_items
from data_pipelines.prepare import prepare_speech_text
from data_pipelines.synth.dialogues import Rejected, dialogue_entries, read_jsonl, text_dialogues
from omniflatten_jax.config import DataConfig, DialogueConfig, FlattenConfig, MelConfig, TrainConfig
from omniflatten_jax.config.stages import DIALOGUE_STAGES
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.speech.activity import speech_problem
from omniflatten_jax.speech.audio import load_audio
from omniflatten_jax.speech.kmeans import KMeansMelTokenizer
from omniflatten_jax.stage_plan import plan_stage
from omniflatten_jax.tokens.transcripts import (
    clean_transcript,
    foreign_script,
    normalize_transcript,
)
from tests.helpers import small_config

SR = 16_000
LAYOUT = TokenLayout("bytes", 256, 32)


def write_jsonl(path, rows) -> str:
    """Rows as JSONL lines; a str row is written as it is (a raw, possibly broken line)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def dialogue(*turns):
    return {"turns": [{"role": r, "text": t} for r, t in turns]}


GOOD = dialogue(("user", "hello there how are you"), ("assistant", "i am fine thank you"))


@pytest.fixture(scope="module")
def tokenizer(spoken_corpus):
    root, _, rows = spoken_corpus
    waves = [load_audio(root / r["audio"], SR) for r in rows]
    return KMeansMelTokenizer.fit(waves, MelConfig(), num_codes=32, seed=0)


def dialogue_context(tokenizer, on_bad_input="skip", source="embedded"):
    cfg = dataclasses.replace(small_config("embedded"), layout=LAYOUT,
                              flatten=FlattenConfig(text_chunk=8),
                              dialogue_train=TrainConfig(seq_len=512))
    return dialogue_builder.DialogueContext(
        tokenizer, LAYOUT, DialogueConfig(source=source), 0,
        tuple(plan_stage(cfg, s) for s in DIALOGUE_STAGES), on_bad_input=on_bad_input)


# Dialogue files ---------------------------------------------------------------------------


def test_unusable_dialogues_are_counted_in_the_build_report(tokenizer, tmp_path):
    """Before: "?!" alone crashed the build (max() arg is an empty sequence), an emoji-only
    assistant turn became a dialogue without an assistant, null text trained as "none", and
    dropped dialogues were counted nowhere."""
    path = write_jsonl(tmp_path / "d.jsonl", [
        GOOD,
        dialogue(("assistant", "?!")),  # 2: nothing left to say
        dialogue(("user", "hello"), ("assistant", "😀")),  # 3: no assistant with words
        {"turns": [{"role": "user", "text": None}, {"role": "assistant", "text": "ok"}]},  # 4
        {"turns": "hello"},  # 5: turns not a list
        dialogue(("user", "hi"), ("user", "..."), ("user", "there"), ("assistant", "yes"))])
    cfg = DialogueConfig(source=f"jsonl:{path}")
    assert [t for _, t in text_dialogues(cfg)] == [
        [("user", "hello there how are you"), ("assistant", "i am fine thank you")],
        [("user", "hi there"), ("assistant", "yes")]]
    entries = dialogue_entries(cfg, on_bad_input="skip")
    assert [t.reason for _, t in entries if isinstance(t, Rejected)] == [
        "no_assistant_turn", "no_assistant_turn", "bad_field", "bad_field"]
    report = dialogue_builder.build(str(tmp_path / "tfds"), "hostile",
                                    {"train": entries, "validation": [], "test": []},
                                    dialogue_context(tokenizer, source=cfg.source))
    assert report["train/kept"] == 2
    assert report["train/skipped_no_assistant_turn"] == 2
    assert report["train/skipped_bad_field"] == 2
    messages = " ".join(report["first_skipped"])
    for where in ("d.jsonl:2", "d.jsonl:3", "d.jsonl:4", "d.jsonl:5"):
        assert where in messages
    assert "must be a string, not None" in messages and "must be a list" in messages


def test_dialogue_file_problems_stop_naming_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, dialogue(("user", "hi"), ("user", None))])
    cfg = DialogueConfig(source=f"jsonl:{path}")
    with pytest.raises(BadInputError, match=r"d.jsonl:2: \"text\" must be a string, not None "
                                            r"\(turn 1\).*on_bad_input=skip"):
        text_dialogues(cfg, on_bad_input="stop")
    write_jsonl(tmp_path / "d.jsonl", [GOOD, dialogue(("user", "hi"), ("assistant", "🙂!"))])
    with pytest.raises(BadInputError, match="d.jsonl:2: no assistant turn with words.*"
                                            "on_bad_input=skip"):
        text_dialogues(cfg, on_bad_input="stop")


def test_the_dialogue_builder_stops_on_a_rejected_line_under_stop(tokenizer, tmp_path):
    rejected = Rejected("bad_field", 'd.jsonl:9: "turns" must be a list')
    with pytest.raises(BadInputError, match="d.jsonl:9.*on_bad_input=skip"):
        dialogue_builder.build(str(tmp_path), "stop",
                               {"train": [("line9", rejected)], "validation": [], "test": []},
                               dialogue_context(tokenizer, on_bad_input="stop"))


def test_broken_dialogue_files_name_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("")
    with pytest.raises(ValueError, match="d.jsonl holds no dialogues"):
        read_jsonl(str(path))
    path.write_text("\n  \n")
    with pytest.raises(ValueError, match="d.jsonl holds no dialogues"):
        text_dialogues(DialogueConfig(source=f"jsonl:{path}"))
    path.write_bytes(json.dumps(GOOD).encode() + b'\n{"turns": [{"role": "user", "text": "caf'
                     + "é".encode("latin-1") + b'"}]}\n')
    for policy in ("skip", "stop"):  # unparseable: always an error (module docstring)
        with pytest.raises(ValueError, match="d.jsonl:2: not UTF-8.*save the file as UTF-8"):
            read_jsonl(str(path), on_bad_input=policy)
    write_jsonl(path, [GOOD, '{"turns": [}'])
    with pytest.raises(ValueError, match="d.jsonl:2: not JSON"):
        read_jsonl(str(path), on_bad_input="skip")
    write_jsonl(path, [{"turns": None}, dialogue(("user", "?"), ("assistant", "!"))])
    with pytest.raises(ValueError, match=r"no usable dialogues: every one was rejected \(2\)"):
        text_dialogues(DialogueConfig(source=f"jsonl:{path}"))


# Manifests --------------------------------------------------------------------------------


def manifest(tmp_path, rows, spoken_corpus) -> str:
    root, _, corpus_rows = spoken_corpus
    for r in corpus_rows[:4]:
        shutil.copy(root / r["audio"], tmp_path / r["audio"])
    return write_jsonl(tmp_path / "m.jsonl", rows)


def test_manifest_field_problems_stop_naming_file_and_line(tmp_path, spoken_corpus):
    good = {"id": "a", "audio": "utt00.wav", "text": "hello there", "split": "train"}
    cases = [
        ([good, good | {"audio": "utt01.wav"}], r"m.jsonl:2: id 'a' is already the id of line 1"),
        ([{"audio": 123, "text": "hi"}], r"m.jsonl:1: \"audio\" must be a path string"),
        ([good, {"audio": "utt01.wav", "text": None}],
         r"m.jsonl:2: \"text\" must be the transcript as a string, not None"),
        ([good | {"split": "dev"}], r"m.jsonl:1: \"split\" must be one of"),
    ]
    stop = DataConfig(on_bad_input="stop")
    for rows, error in cases:
        path = manifest(tmp_path, rows, spoken_corpus)
        with pytest.raises(BadInputError, match=error + ".*on_bad_input=skip"):
            manifest_items(path, stop)


def test_broken_manifests_name_the_file(tmp_path, spoken_corpus):
    path = tmp_path / "m.jsonl"
    for content in ("", "\n \n"):
        path.write_text(content)
        with pytest.raises(ValueError, match="m.jsonl holds no utterances"):
            speech_text_items(DataConfig(source=f"manifest:{path}"))
    path.write_bytes(b'{"audio": "a.wav", "text": "\xe9t\xe9"}\n')
    with pytest.raises(ValueError, match="m.jsonl:1: not UTF-8"):
        manifest_items(str(path), DataConfig())
    manifest(tmp_path, [{"audio": None, "text": "x"}, {"id": 1, "audio": "a", "text": 2}],
             spoken_corpus)
    with pytest.raises(ValueError, match=r"holds no utterances: every line was rejected \(2\)"):
        manifest_items(str(path), DataConfig())


def signals() -> dict[str, np.ndarray]:
    t = np.arange(2 * SR) / SR
    return {"silence": np.zeros(2 * SR), "sine": 0.5 * np.sin(2 * np.pi * 440 * t),
            "square": 0.5 * np.sign(np.sin(2 * np.pi * 220 * t)), "dc": np.full(2 * SR, 0.3),
            "beeps": 0.5 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 3 * t) > 0),
            "huge": 1e6 * np.sin(2 * np.pi * 440 * t)}


def test_bad_manifest_lines_and_non_speech_are_skipped_and_counted(tmp_path, spoken_corpus):
    """Before: duplicate ids ended in TFDS's "install TensorFlow" error, `"audio": 123` in a
    TypeError, and silence or a tone with a transcript was trained on."""
    _, _, corpus_rows = spoken_corpus
    rows = [{"id": r["id"], "audio": r["audio"], "text": r["text"], "split": "train"}
            for r in corpus_rows[:4]]
    for name, wave in signals().items():
        soundfile.write(tmp_path / f"{name}.wav", wave, SR, subtype="FLOAT")
        rows.append({"id": name, "audio": f"{name}.wav", "text": "hello there", "split": "train"})
    rows += [rows[0] | {"text": "a second line with the first id"},  # duplicate id
             {"id": "number", "audio": 123, "text": "hi", "split": "train"},
             {"id": "null", "audio": "utt00.wav", "text": None, "split": "train"}]
    path = manifest(tmp_path, rows, spoken_corpus)
    report = prepare_speech_text(small_config(f"manifest:{path}"), str(tmp_path / "w")).report
    assert report["kept"] == {"train": 4}
    assert report["skipped"] == {"train/no_speech": 5, "train/bad_amplitude": 1,
                                 "train/duplicate_id": 1, "train/bad_field": 2}
    messages = " ".join(report["first_skipped"])
    for text in ("silence.wav", "sine.wav", "square.wav", "dc.wav", "beeps.wav", "huge.wav",
                 "m.jsonl:11", "m.jsonl:12", "m.jsonl:13", "data.check_speech_activity=false"):
        assert text in messages


def test_a_transcript_pasted_from_a_terminal_trains_without_its_escapes():
    """Before: "\x1b[31mhello\x1b[0m" trained as "31mhello 0m"."""
    coloured = "\x1b[31mHello\x1b[0m there,\x07 \x1b]0;a title\x07friend\x00"
    assert normalize_transcript(coloured) == "hello there friend"
    assert clean_transcript(coloured) == "Hello there,  friend"  # normalize_text=false
    assert clean_transcript("one\ttwo\r\nthree\x9b") == "one two  three"


def test_text_in_another_script_than_the_recordings_language_is_rejected():
    assert foreign_script("你好，今天天气很好", "en") == "CJK"
    assert foreign_script("привет как дела", "en") == "Cyrillic"
    assert foreign_script("hello how are you", "zh") == "Latin"
    for text, language in [("hello there", "en"), ("café au lait très bien", "fr"),
                           ("我用iPhone拍照", "zh"),  # a loanword inside Chinese
                           ("Python", "zh"), ("你好", "en"),  # too short to tell
                           ("12 34", "en"), ("hello there friend", "xx")]:  # unlisted: kept
        assert foreign_script(text, language) is None, (text, language)


def test_a_manifest_with_escapes_and_chinese_lines_for_english_audio(tmp_path, spoken_corpus):
    """An English recording whose transcript was pasted in colour trains on its words; one
    whose transcript is Chinese is skipped and counted (or stops the build, naming the line)."""
    _, _, corpus_rows = spoken_corpus
    rows = [{"id": r["id"], "audio": r["audio"], "text": r["text"], "split": "train"}
            for r in corpus_rows[:4]]
    rows[0]["text"] = f"\x1b[1;32m{rows[0]['text']}\x1b[0m"
    rows[1]["text"] = "这是一段中文的文字记录"
    path = manifest(tmp_path, rows, spoken_corpus)
    prepared = prepare_speech_text(small_config(f"manifest:{path}"), str(tmp_path / "w"))
    assert prepared.report["kept"] == {"train": 3}
    assert prepared.report["skipped"] == {"train/wrong_script": 1}
    assert ("written in CJK script, not in that of data.language='en' (Latin)"
            in " ".join(prepared.report["first_skipped"]))
    texts = [items.text for items in speech_text_items(DataConfig(source=f"manifest:{path}"))[
        "train"]]
    assert texts[0].startswith("\x1b")  # read as written; the builder cleans it
    stop = dataclasses.replace(small_config(f"manifest:{path}"),
                               data=DataConfig(source=f"manifest:{path}", on_bad_input="stop"))
    with pytest.raises(BadInputError, match=r"utt01 .*written in CJK script.*on_bad_input"):
        prepare_speech_text(stop, str(tmp_path / "w2"))


def test_a_dialogue_turn_in_another_script_is_rejected_naming_the_turn(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        GOOD, dialogue(("user", "hello"), ("assistant", "\x1b[31m我很好，谢谢你的关心\x1b[0m"))])
    cfg = DialogueConfig(source=f"jsonl:{path}")
    with pytest.raises(BadInputError, match=r"d.jsonl:2: turn 1 '我很好 谢谢你的关心' is written "
                                            r"in CJK script, not in that of dialogue.language"):
        text_dialogues(cfg, on_bad_input="stop")
    # In Chinese, the English line is the one refused; the Chinese one is kept, cleaned.
    chinese = dataclasses.replace(cfg, language="zh")
    with pytest.raises(BadInputError, match=r"d.jsonl:1: turn 0 .* Latin script"):
        text_dialogues(chinese, on_bad_input="stop")
    assert text_dialogues(chinese)[0][1] == [("user", "hello"),
                                             ("assistant", "我很好 谢谢你的关心")]


def test_a_train_split_without_speech_names_why_the_tokenizer_cannot_be_fitted(tmp_path):
    """Before: "need at least one array to concatenate"."""
    rows = []
    for name in ("silence", "dc"):
        soundfile.write(tmp_path / f"{name}.wav", signals()[name], SR, subtype="FLOAT")
        rows.append({"id": name, "audio": f"{name}.wav", "text": "hello there",
                     "split": "train"})
    rows.append({"id": "gone", "audio": "missing.wav", "text": "hello there", "split": "train"})
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(ValueError, match=re.escape(
            f"no usable audio to fit the speech tokenizer on: of the 3 train utterances of "
            f"manifest:{path} it read, 1 recordings could not be read") + ".* 2 are not speech"):
        prepare_speech_text(small_config(f"manifest:{path}"), str(tmp_path / "w"))


# Speech activity ----------------------------------------------------------------------------


def test_synthesised_speech_always_passes_the_activity_check():
    items = [it for lang in ("en", "zh")
             for split in embedded_items(DataConfig(language=lang)).values() for it in split
             if any(ch.isalnum() for ch in normalize_transcript(it.text))]
    chosen = [items[i] for i in np.random.default_rng(0).choice(len(items), 30, replace=False)]
    voices = {audio.voice.name for it in chosen for audio in (it.audio, it.tts_audio)}
    assert len(voices) >= 5
    for item in chosen:
        for audio in (item.audio, item.tts_audio):
            assert speech_problem(audio.load(SR, 0.2), SR) is None, (item.text, audio.voice)


def test_non_speech_files_are_flagged_and_the_check_can_be_switched_off(tokenizer, tmp_path):
    expected = {"silence": "no_speech", "sine": "no_speech", "square": "no_speech",
                "dc": "no_speech", "beeps": "no_speech", "huge": "bad_amplitude"}
    ctx = BuildContext(tokenizer, LAYOUT, DataConfig(), seq_len=4096)
    off = dataclasses.replace(ctx, data=DataConfig(check_speech_activity=False))
    for name, wave in signals().items():
        path = tmp_path / f"{name}.wav"
        soundfile.write(path, wave, SR, subtype="FLOAT")  # float: the 1e6 survives loading
        (item,) = manifest_items(write_jsonl(tmp_path / "m.jsonl", [
            {"id": name, "audio": path.name, "text": "hello there", "split": "test"}]),
            DataConfig())["test"]
        with pytest.raises(BadInputError) as e:
            make_example(item, ctx, keep_audio=True)
        assert e.value.args[0] == expected[name] and f"{name}.wav" in e.value.args[1]
        if name != "huge":  # off: trained as given (the 1e6 file is clipped when stored)
            assert make_example(item, off, keep_audio=True)["speech_ids"].size > 0
