"""Simulated conversations: timing invariants, flatten round trips, stage examples, handoff."""

import dataclasses
import json

import numpy as np
import pytest

from data_pipelines.builders.dialogues import DialogueContext, problem, tokenize
from data_pipelines.dialogue_examples import assistant_text_lag, stage_examples
from data_pipelines.records import dialogue_streams
from data_pipelines.synth import voices
from data_pipelines.synth.conversation import simulate
from data_pipelines.synth.dialogues import read_jsonl, text_dialogues
from omniflatten_jax.config import (
    DialogueConfig,
    FlattenConfig,
    MelConfig,
    SimulationConfig,
    TrainConfig,
)
from omniflatten_jax.config.stages import CHUNKED_STAGES, DIALOGUE_STAGES
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.speech.audio import load_audio
from omniflatten_jax.speech.kmeans import KMeansMelTokenizer
from omniflatten_jax.stage_plan import plan_stage
from omniflatten_jax.tokens.chunk_layout import chunk_layout
from omniflatten_jax.tokens.dialogue_chunks import dialogue_chunks
from omniflatten_jax.tokens.sequence import Stream
from tests.helpers import small_config
from tests.sequence_parsing import parse_half_duplex

LAYOUT = TokenLayout("bytes", 256, 32)
FLAT = FlattenConfig(text_chunk=8)
TURNS = [("user", "hello there how are you today"),
         ("assistant", "i am very well thank you for asking me that"),
         ("user", "what would you like to talk about now"),
         ("assistant", "we could talk about music or the weather or books"),
         ("user", "tell me about books")]


@pytest.fixture(scope="module")
def tokenizer(spoken_corpus):
    root, _, rows = spoken_corpus
    waves = [load_audio(root / r["audio"], 16_000) for r in rows]
    return KMeansMelTokenizer.fit(waves, MelConfig(), num_codes=32, seed=0)


def plan(stage, seq_len=512, flatten=FLAT):
    cfg = dataclasses.replace(small_config("embedded"), layout=LAYOUT, flatten=flatten,
                              dialogue_train=TrainConfig(seq_len=seq_len))
    return plan_stage(cfg, stage)


def context(tokenizer, sim=SimulationConfig(), flatten=FLAT):
    return DialogueContext(tokenizer, LAYOUT, DialogueConfig(simulation=sim), 0,
                           tuple(plan(s, flatten=flatten) for s in DIALOGUE_STAGES))


def conversation(seed, sim):
    rng = np.random.default_rng(seed)
    return simulate(TURNS, voices.user_voice("en", rng), voices.assistant_voice("en"), sim, rng,
                    16_000)


@pytest.mark.parametrize("probability", [0.0, 1.0], ids=["no_interruptions", "interruptions"])
def test_timeline_patterns_and_channels(probability):
    sim = SimulationConfig(interrupt_probability=probability)
    conv = conversation(1, sim)
    assert conv.boundaries == (("reply", "interrupt") * 2 if probability else
                               ("reply", "wait") * 2)
    assert len(conv.user_audio) == len(conv.assistant_audio)
    for prev, turn in zip(conv.turns, conv.turns[1:]):
        if prev.role == "user":  # (a) a reply starts after the user ends, within the gap
            assert sim.reply_gap_s[0] <= turn.start_s - prev.end_s <= sim.reply_gap_s[1] + 1e-6
        elif prev.interrupted:  # (b) the user cut in; the assistant stopped within reaction
            assert turn.start_s < prev.end_s <= turn.start_s + sim.reaction_s[1] + 1e-6
            assert len(prev.text) < len(TURNS[conv.turns.index(prev)][1])
        else:  # (c) the assistant finished and the user waited
            assert sim.wait_s[0] <= turn.start_s - prev.end_s <= sim.wait_s[1] + 1e-6
    # Noise is on the user channel only, at the drawn SNR.
    assert 15 <= conv.snr_db <= 30 and np.all(conv.user_audio != 0)
    assert np.mean(conv.assistant_audio == 0) > 0.2


def test_stream_invariants_of_tokenized_dialogues(tokenizer):
    sim = SimulationConfig(interrupt_probability=0.5)
    ctx = context(tokenizer, sim)
    checked = 0
    for seed in range(6):
        conv = conversation(seed, sim)
        record = tokenize(conv, ctx)
        if problem(record, ctx):
            continue
        checked += 1
        dialogue = dialogue_streams(record)
        chunks = dialogue_chunks(dialogue, LAYOUT, FLAT)
        silent = LAYOUT.special("<silent_speech>")
        # Every frame lands in exactly one chunk, in order.
        np.testing.assert_array_equal(chunks["user_speech"].reshape(-1)[:dialogue.n_frames],
                                      dialogue.user_speech)
        # User text never precedes the chunk in which its word starts.
        user_text = chunks["user_text"].reshape(-1)
        placed = np.flatnonzero(np.isin(user_text, np.arange(256)))
        frames = [f for t in dialogue.turns if t.role == "user" for f in t.token_frames]
        assert len(placed) == len(frames)
        for slot, frame in zip(placed, frames):
            assert slot // FLAT.text_chunk >= frame // FLAT.speech_chunk
        for turn in dialogue.turns:  # ... nor the turn's start
            assert all(f >= turn.start for f in (turn.token_frames if turn.role == "user"
                                                 else []))
        # Assistant text ends no later than the chunk where its speech ends.
        assert assistant_text_lag(record, LAYOUT, FLAT) <= 0
        # After an interruption the assistant channel falls silent within the reaction time.
        rate = tokenizer.frame_rate
        for prev, nxt in zip(conv.turns, conv.turns[1:]):
            if prev.interrupted:
                quiet_from = int(np.ceil((nxt.start_s + sim.reaction_s[1]) * rate)) + 1
                following = [t for t in conv.turns if t.role == "assistant" and
                             t.start_s > nxt.start_s]
                quiet_to = (int(following[0].start_s * rate) if following
                            else dialogue.n_frames)
                assert (record["assistant_speech"][quiet_from:quiet_to] == silent).all()
        # Flatten / unflatten round trips for every chunked layout.
        for stage in CHUNKED_STAGES:
            layout = chunk_layout(stage, FLAT)
            back = layout.unflatten(layout.flatten({k: chunks[k] for k in layout.keys}))
            for key in layout.keys:
                np.testing.assert_array_equal(back[key], chunks[key])
        # Half-duplex turns round trip too, and carry each turn's own speech.
        for seq in stage_examples(record, LAYOUT, plan("half_duplex")):
            for turn in parse_half_duplex(LAYOUT, seq.tokens):
                assert len(turn.speech_ids) and np.all(LAYOUT.is_speech(turn.speech_ids))
    assert checked >= 3


def test_long_dialogues_split_at_chunk_boundaries_without_loss(tokenizer):
    ctx = context(tokenizer)
    record = tokenize(conversation(3, SimulationConfig()), ctx)
    chunks = dialogue_chunks(dialogue_streams(record), LAYOUT, FLAT)
    for stage in CHUNKED_STAGES:
        layout = chunk_layout(stage, FLAT)
        windows = stage_examples(record, LAYOUT, plan(stage, 4 * layout.chunk_len + 3))
        assert all(len(w) <= 4 * layout.chunk_len for w in windows)
        joined = np.concatenate([w.tokens for w in windows])
        np.testing.assert_array_equal(
            joined, layout.flatten({k: chunks[k] for k in layout.keys}))
        mask = np.concatenate([w.loss_mask for w in windows])
        streams = np.concatenate([w.streams for w in windows])
        assert not mask[streams == Stream.USER_SPEECH].any()
    groups = stage_examples(record, LAYOUT, plan("half_duplex", 300))
    assert len(groups) > 1 and all(len(g) <= 300 for g in groups)
    turns = [t for g in groups for t in parse_half_duplex(LAYOUT, g.tokens)]
    assert [t.role for t in turns] == [r for r, _ in TURNS]


def test_text_dialogue_sources(tmp_path):
    embedded = text_dialogues(DialogueConfig(max_dialogues=50))
    assert len(embedded) == 50 and all(t[0][0] == "user" for _, t in embedded)
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"turns": [{"role": "user", "text": "hi"},
                                          {"role": "user", "text": "there"},
                                          {"role": "assistant", "text": "hello"}]}) + "\n")
    (uid, turns), = text_dialogues(DialogueConfig(source=f"jsonl:{path}"))
    assert turns == [("user", "hi there"), ("assistant", "hello")]
    path.write_text(json.dumps({"turns": [{"role": "bot", "text": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match="d.jsonl:1: roles must be user or assistant"):
        read_jsonl(str(path))


def test_overflowing_text_is_counted_not_truncated(tokenizer):
    narrow = context(tokenizer, flatten=FlattenConfig(text_chunk=1))
    record = tokenize(conversation(0, SimulationConfig()), narrow)
    assert problem(record, narrow) in ("text_overflow", "assistant_text_after_its_speech")


def test_training_variants_add_train_dialogues_and_leave_held_out_ones():
    from data_pipelines.prepare import dialogue_splits
    from omniflatten_jax.config import ConfigError, DialogueConfig

    entries = [(f"line{i}", ("turns", i)) for i in range(1, 41)]
    once = dialogue_splits(entries, DialogueConfig(validation_fraction=0.2, test_fraction=0.2))
    thrice = dialogue_splits(entries, DialogueConfig(validation_fraction=0.2,
                                                     test_fraction=0.2, train_variants=3))
    assert once["validation"] == thrice["validation"] and once["test"] == thrice["test"]
    assert thrice["train"][:len(once["train"])] == once["train"]  # places (seeds) kept
    assert len(thrice["train"]) == 3 * len(once["train"])
    assert [u for u, _ in thrice["train"][len(once["train"]):][:1]] == [
        f"{once['train'][0][0]}~1"]
    with pytest.raises(ConfigError, match="train_variants must be an integer >= 1"):
        DialogueConfig(train_variants=0)
