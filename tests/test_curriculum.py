"""The dialogue curriculum: --stage=all, resume, lineage, and what handoff refuses."""

import json
import os
import shutil
import subprocess
import sys

import jax
import pytest

from omniflatten_jax import checkpoint
from omniflatten_jax.config import DecodingPolicy
from omniflatten_jax.config.token_layout import LayoutMismatchError, TokenLayout
from omniflatten_jax.stage_plan import plan_stage
from omniflatten_jax.tokens.chunk_layout import chunk_layout
from omniflatten_jax.training.runner import train_stage
from tests.conftest import SENTENCES
from tests.helpers import run_command, small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("alignment", "half_duplex", "duplex_4", "duplex_3", "duplex_2")


def run(workdir, manifest, dialogues, *extra):
    args = [sys.executable, os.path.join(ROOT, "experiments", "run.py"), f"--workdir={workdir}",
            f"--data=manifest:{manifest}", f"--set=dialogue.source=jsonl:{dialogues}",
            "--set=train.steps=2", "--set=dialogue_train.steps=2", "--set=train.batch_size=4",
            "--set=dialogue_train.batch_size=4", "--set=train.seq_len=128",
            "--set=dialogue_train.seq_len=256", "--set=data.num_workers=0",
            "--set=eval.max_examples=4", "--set=eval.tts_max_examples=2",
            "--set=speech.fit_max_utterances=64", "--set=flatten.text_chunk=8",
            # Validation dialogues to choose each duplex stage's decoding policy on; a
            # 2-step model may not pass any threshold but 0 (speak whenever silent).
            "--set=dialogue.validation_fraction=0.3", "--set=eval.policy_onsets=0,0.5", *extra]
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


def test_all_stages_hand_over_and_resume(spoken_corpus, dialogue_file, tmp_path,
                                         tmp_path_factory):
    _, manifest, _ = spoken_corpus
    result = run(tmp_path, manifest, dialogue_file, "--stage=all",
                 "--set=dialogue.test_fraction=0.3")
    assert result.returncode == 0, result.stderr[-4000:]
    [tokenizer_file] = (tmp_path / "data").glob("speech_tokenizer-*.npz")
    tokenizer = tokenizer_file.read_bytes()
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
            # The FDB harness on held-out samples: the model's scores and the data's.
            fdb = evaluation["fdb"]
            assert fdb["model"]["smooth_turn_taking"]["samples"] > 0
            assert set(fdb["data"]) == set(fdb["model"])
            kept = tmp_path / stage / "fdb" / "smooth_turn_taking"
            assert (kept / "1" / "output.wav").exists()
            assert fdb["model"]["smooth_turn_taking"]["folder"] == str(kept)
            for scores in fdb["model"].values():  # notes name the kept folders too
                assert str(tmp_path / stage / "fdb") in scores.get("not_scored", str(kept))
            assert meta.context_chunks == 256 // chunk_layout(stage, meta.flatten).chunk_len
            # The decoding policy chosen on validation is the one stored in the checkpoint.
            chosen = evaluation["decoding"]
            assert meta.decoding == DecodingPolicy(**chosen["policy"])
            assert chosen["points"][chosen["chosen"]]["spoke"] > 0
            assert (tmp_path / stage / "operating_curve.png").is_file()
        # Every checkpoint describes itself and carries the workdir's speech tokenizer.
        assert meta.stage == stage
        assert (meta.flatten is None if stage == "alignment" else meta.flatten.text_chunk == 8)
        assert checkpoint.load_speech_tokenizer_bytes(tmp_path / stage / "checkpoints") == \
            tokenizer
        previous = stage
    kinds = [r.get("stage", r["kind"]) for r in meta.lineage]
    assert kinds == ["random_init", "alignment", "init_from", "half_duplex", "init_from",
                     "duplex_4", "init_from", "duplex_3", "init_from", "duplex_2"]
    again = run(tmp_path, manifest, dialogue_file, "--stage=all",
                "--set=dialogue.test_fraction=0.3")
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("is complete") == len(STAGES)
    # Resuming with another architecture is refused, naming the field.
    changed = run(tmp_path, manifest, dialogue_file, "--stage=duplex_2",
                  "--set=dialogue.test_fraction=0.3", "--set=model.rope_theta=5000")
    assert changed.returncode != 0 and "Traceback" not in changed.stderr
    assert "rope_theta: 10000.0 in the checkpoint, 5000.0 in this run" in changed.stderr
    # A policy under which the model never speaks on validation fails the stage, naming it.
    (tmp_path / "duplex_2" / "eval.json").unlink()
    mute = run(tmp_path, manifest, dialogue_file, "--stage=duplex_2",
               "--set=dialogue.test_fraction=0.3", "--set=eval.policy_onsets=1")
    assert mute.returncode != 0 and "Traceback" not in mute.stderr
    assert "duplex_2: the model never speaks on its" in mute.stderr
    assert "onset 1, stop 0.5" in mute.stderr

    # A duplex checkpoint copied elsewhere, its workdir deleted, still decodes and exports.
    copy = tmp_path_factory.mktemp("copied") / "duplex_2"
    shutil.copytree(tmp_path / "duplex_2" / "checkpoints", copy)
    shutil.rmtree(tmp_path)
    from data_pipelines.synth.espeak import Synthesizer, Voice
    from omniflatten_jax.speech.audio import save_audio

    utt = Synthesizer().speak("hello there how are you", Voice("en+m3"))
    save_audio(copy.parent / "user.wav", utt.audio, utt.sample_rate)
    duplex = run_command("duplex", "--checkpoint", copy, "--input", copy.parent / "user.wav",
                         "--out_dir", copy.parent / "out")
    assert duplex.returncode == 0, duplex.stderr[-4000:]
    assert (copy.parent / "out" / "output.wav").is_file()
    export = run_command("to_hf", "--checkpoint", copy, "--out", copy.parent / "hf")
    assert export.returncode == 0, export.stderr[-4000:]
    hf = copy.parent / "hf"
    assert (hf / "speech_tokenizer.npz").read_bytes() == tokenizer
    described = json.loads((hf / "omniflatten.json").read_text())
    assert described["stage"] == "duplex_2" and described["context_chunks"] == meta.context_chunks
    assert TokenLayout.load(str(hf)) == meta.layout


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
        train_stage(cfg, plan_stage(cfg, "half_duplex"), str(tmp_path / "half_duplex"),
                    lambda: iter(()), init_from=str(tmp_path / "previous"))
