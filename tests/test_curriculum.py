"""The dialogue curriculum: --stage=all, resume, lineage, and what handoff refuses."""

import json
import os
import subprocess
import sys

import jax
import pytest

from omniflatten_jax import checkpoint
from omniflatten_jax.training.runner import train_stage
from omniflatten_jax.vocab import LayoutMismatchError, TokenLayout
from tests.conftest import SENTENCES
from tests.helpers import small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("alignment", "half_duplex", "duplex_4", "duplex_3", "duplex_2")


def run(workdir, manifest, dialogues, *extra):
    args = [sys.executable, os.path.join(ROOT, "experiments", "run.py"), f"--workdir={workdir}",
            f"--data=manifest:{manifest}", f"--set=dialogue.source=jsonl:{dialogues}",
            "--set=train.steps=2", "--set=dialogue_train.steps=2", "--set=train.batch_size=4",
            "--set=dialogue_train.batch_size=4", "--set=train.seq_len=128",
            "--set=dialogue_train.seq_len=256", "--set=data.num_workers=0",
            "--set=eval.max_examples=4", "--set=eval.tts_max_examples=2",
            "--set=speech.fit_max_utterances=64", "--set=flatten.text_chunk=8", *extra]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=900)


@pytest.fixture(scope="module")
def dialogue_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dialogues") / "dialogues.jsonl"
    lines = []
    for i in range(0, len(SENTENCES) - 3, 2):
        turns = [{"role": "user" if j % 2 == 0 else "assistant", "text": SENTENCES[i + j]}
                 for j in range(4)]
        lines.append(json.dumps({"turns": turns}))
    path.write_text("\n".join(lines * 3) + "\n")
    return path


def test_all_stages_hand_over_and_resume(spoken_corpus, dialogue_file, tmp_path):
    _, manifest, _ = spoken_corpus
    result = run(tmp_path, manifest, dialogue_file, "--stage=all",
                 "--set=dialogue.test_fraction=0.3")
    assert result.returncode == 0, result.stderr[-4000:]
    previous = None
    for stage in STAGES:
        evaluation = json.loads((tmp_path / stage / "eval.json").read_text())
        assert evaluation["step"] == 2
        meta = checkpoint.load_meta(tmp_path / stage / "checkpoints")
        if previous:  # lineage: which checkpoint, which step
            record = [r for r in meta.lineage if r["kind"] == "init_from"][-1]
            assert record["path"] == str(tmp_path / previous / "checkpoints" / "2")
            assert set(evaluation["cross_entropy"]["per_stream"]) >= {"assistant_speech"}
        if stage == "half_duplex":  # replies generated turn by turn
            assert evaluation["replies"]["replies"] > 0
            assert evaluation["replies"]["empty_reply_cer"] == 1.0
        if stage.startswith("duplex"):  # test dialogues decoded live, scored beside the data
            tt, data = evaluation["turn_taking"], evaluation["turn_taking_data"]
            assert tt["dialogues"] > 0 and tt["assistant"]["events"] > 0
            assert tt["assistant"]["events"] == data["assistant"]["events"]
            assert data["assistant"]["failure_rate"] == 0.0  # the data always replies in time
            settings = json.loads((tmp_path / stage / "inference.json").read_text())
            assert settings["stage"] == stage and os.path.isfile(settings["speech_tokenizer"])
        previous = stage
    kinds = [r.get("stage", r["kind"]) for r in meta.lineage]
    assert kinds == ["random_init", "alignment", "init_from", "half_duplex", "init_from",
                     "duplex_4", "init_from", "duplex_3", "init_from", "duplex_2"]
    again = run(tmp_path, manifest, dialogue_file, "--stage=all",
                "--set=dialogue.test_fraction=0.3")
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("is complete") == len(STAGES)


def test_a_stage_without_its_predecessor_says_what_to_run(spoken_corpus, dialogue_file,
                                                         tmp_path):
    _, manifest, _ = spoken_corpus
    result = run(tmp_path, manifest, dialogue_file, "--stage=duplex_3")
    assert result.returncode != 0
    assert "Run `python experiments/run.py --stage=duplex_4` first" in result.stderr
    v2 = run(tmp_path, manifest, dialogue_file, "--stage=duplex_3", "--curriculum=v2")
    assert "--stage=half_duplex` first" in v2.stderr


def test_handoff_refuses_a_predecessor_with_another_token_layout(tmp_path):
    cfg = small_config("embedded")
    other = TokenLayout("bytes", 256, 64)
    from omniflatten_jax.model import transformer

    model = transformer(cfg.model, other.vocab_size)
    params = model.init(jax.random.key(0))
    checkpoint.save_params(tmp_path / "previous", 5, params,
                           checkpoint.CheckpointMeta(cfg.model, other))
    with pytest.raises(LayoutMismatchError, match="num_speech_codes: 32 .*vs 64"):
        train_stage(cfg, "half_duplex", str(tmp_path / "half_duplex"),
                    lambda i, n: iter(()), init_from=str(tmp_path / "previous"))
