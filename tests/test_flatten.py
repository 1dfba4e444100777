"""flatten/unflatten and the ragged chunking step: exact round trips and the documented layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omniflatten_jax.config import FlattenConfig
from omniflatten_jax.config.stages import CHUNKED_STAGES
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.tokens.chunk_layout import ChunkLayout, chunk_layout
from omniflatten_jax.tokens.dialogue_chunks import (
    DialogueStreams,
    TextOverflowError,
    Turn,
    dialogue_chunks,
)
from omniflatten_jax.tokens.sequence import (
    SpokenTurn,
    Stream,
    asr_sequence,
    half_duplex_sequence,
    tts_sequence,
)
from tests.sequence_parsing import parse_alignment, parse_half_duplex

LAYOUT = TokenLayout("bytes", 256, 64)
SS, ST = LAYOUT.special("<silent_speech>"), LAYOUT.special("<silent_text>")


def speech(codes):
    return LAYOUT.speech_ids(np.asarray(codes))


streams_strategy = st.lists(
    st.tuples(st.sampled_from(list(Stream)[1:5]), st.integers(1, 12)), min_size=1, max_size=5,
    unique_by=lambda s: s[0])


@settings(max_examples=60, deadline=None)
@given(streams=streams_strategy, n_chunks=st.integers(1, 9), batch=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_flatten_unflatten_round_trip_numpy(streams, n_chunks, batch, seed):
    layout = ChunkLayout("random", tuple(streams), frozenset({streams[0][0]}))
    rng = np.random.default_rng(seed)
    chunks = {s.key: rng.integers(0, 1000, (batch, n_chunks, w), dtype=np.int32)
              for s, w in streams}
    flat = layout.flatten(chunks)
    assert isinstance(flat, np.ndarray) and flat.shape == (batch, n_chunks * layout.chunk_len)
    back = layout.unflatten(flat)
    assert back.keys() == chunks.keys()
    for key in chunks:
        np.testing.assert_array_equal(back[key], chunks[key])
    # Every position carries the stream whose token sits there.
    ids = layout.stream_ids(n_chunks)
    for stream, _ in streams:
        np.testing.assert_array_equal(np.sort(flat[0][ids == stream]),
                                      np.sort(chunks[stream.key][0].reshape(-1)))
    np.testing.assert_array_equal(layout.loss_mask(n_chunks), ids == streams[0][0])


@settings(max_examples=15, deadline=None)
@given(streams=streams_strategy, n_chunks=st.integers(1, 6))
def test_flatten_is_jittable_and_vmappable(streams, n_chunks):
    layout = ChunkLayout("random", tuple(streams), frozenset())
    rng = np.random.default_rng(0)
    chunks = {s.key: rng.integers(0, 1000, (4, n_chunks, w), dtype=np.int32) for s, w in streams}
    expected = layout.flatten(chunks)
    flat = jax.jit(jax.vmap(layout.flatten))({k: jnp.asarray(v) for k, v in chunks.items()})
    np.testing.assert_array_equal(np.asarray(flat), expected)
    back = jax.jit(jax.vmap(layout.unflatten))(flat)
    for key in chunks:
        np.testing.assert_array_equal(np.asarray(back[key]), chunks[key])


def test_chunk_layouts_follow_the_method():
    cfg = FlattenConfig()
    d4, d3, d2 = (chunk_layout(s, cfg) for s in CHUNKED_STAGES)
    assert [(s.key, w) for s, w in d4.streams] == [
        ("user_speech", 10), ("user_text", 2), ("assistant_text", 2), ("assistant_speech", 10)]
    assert d4.chunk_len == 24 and d3.chunk_len == 22 and d2.chunk_len == 20
    assert d4.loss_streams == {Stream.ASSISTANT_TEXT, Stream.ASSISTANT_SPEECH}
    assert chunk_layout("duplex_4", FlattenConfig(user_text_loss=True)).loss_streams == {
        Stream.USER_TEXT, Stream.ASSISTANT_TEXT, Stream.ASSISTANT_SPEECH}
    assert d2.loss_streams == {Stream.ASSISTANT_SPEECH}
    with pytest.raises(ValueError, match="not a chunked stage"):
        chunk_layout("alignment", cfg)


def test_worked_duplex_3_example_from_the_design():
    """The worked duplex_3 example: speech chunk 4, text chunk 2; user speaks frames 0-5, the
    assistant answers "hello" (h1 h2 h3) and speaks in frames 8-13."""
    cfg = FlattenConfig(speech_chunk=4, text_chunk=2)
    u = speech(np.arange(16))
    a = np.full(16, SS)
    a[8:14] = speech(np.arange(40, 46))
    h = np.array([104, 101, 108])
    dialogue = DialogueStreams(u, a, (Turn("user", 0, 6, np.array([117])),
                                      Turn("assistant", 8, 14, h)))
    chunks = dialogue_chunks(dialogue, LAYOUT, cfg)
    layout = chunk_layout("duplex_3", cfg)
    flat = layout.flatten(chunks)
    eot = LAYOUT.special("[EOT]")
    expected = np.concatenate([
        u[0:4], [ST, ST], [SS] * 4,
        u[4:8], [ST, ST], [SS] * 4,
        u[8:12], h[:2], a[8:12],
        u[12:16], [h[2], eot], a[12:14], [SS, SS],
    ])
    np.testing.assert_array_equal(flat, expected)
    loss = layout.loss_mask(4)
    assert not loss[layout.stream_ids(4) == Stream.USER_SPEECH].any()
    assert loss[layout.stream_ids(4) != Stream.USER_SPEECH].all()


@settings(max_examples=60, deadline=None)
@given(n_frames=st.integers(1, 80), speech_chunk=st.integers(1, 12),
       text_chunk=st.integers(1, 4), lead=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_dialogue_chunks_invariants(n_frames, speech_chunk, text_chunk, lead, seed):
    rng = np.random.default_rng(seed)
    cfg = FlattenConfig(speech_chunk=speech_chunk, text_chunk=text_chunk,
                        assistant_text_lead_chunks=lead)
    u = speech(rng.integers(0, 64, n_frames))
    a = np.where(rng.random(n_frames) < 0.5, SS, speech(rng.integers(0, 64, n_frames)))
    start = int(rng.integers(0, n_frames))
    text = rng.integers(0, 256, int(rng.integers(0, 4))).astype(np.int32)
    dialogue = DialogueStreams(u, a, (Turn("assistant", start, n_frames, text),))
    try:
        chunks = dialogue_chunks(dialogue, LAYOUT, cfg)
    except TextOverflowError:
        # Only when the text really needs more slots than the chunks after its start hold.
        n_chunks = -(-n_frames // speech_chunk)
        free = (n_chunks - max(start // speech_chunk - lead, 0)) * text_chunk
        assert len(text) + 1 > free
        return
    n_chunks = -(-n_frames // speech_chunk)
    # Every frame lands in exactly one chunk, in order; the tail is silent speech.
    us = chunks["user_speech"].reshape(-1)
    np.testing.assert_array_equal(us[:n_frames], u)
    assert (us[n_frames:] == SS).all() and len(us) == n_chunks * speech_chunk
    np.testing.assert_array_equal(chunks["assistant_speech"].reshape(-1)[:n_frames], a)
    # The text, then [EOT], appear in order and never before their allowed chunk.
    at = chunks["assistant_text"].reshape(-1)
    placed = np.flatnonzero(at != ST)
    np.testing.assert_array_equal(at[placed], np.append(text, LAYOUT.special("[EOT]")))
    assert placed[0] // text_chunk >= max(start // speech_chunk - lead, 0)
    assert (chunks["user_text"] == ST).all()
    # Round trip through every chunked layout.
    for stage in CHUNKED_STAGES:
        layout = chunk_layout(stage, cfg)
        back = layout.unflatten(layout.flatten(chunks))
        for key in layout.keys:
            np.testing.assert_array_equal(back[key], chunks[key])


def test_user_text_waits_for_its_words():
    cfg = FlattenConfig(speech_chunk=4, text_chunk=2)
    u = speech(np.arange(24) % 64)
    text = np.array([1, 2, 3])
    # Word times: token 0 at frame 1, token 1 at frame 9, token 2 at frame 10.
    turn = Turn("user", 0, 12, text, token_frames=np.array([1, 9, 10]))
    chunks = dialogue_chunks(DialogueStreams(u, np.full(24, SS), (turn,)), LAYOUT, cfg)
    ut = chunks["user_text"]
    assert ut[0].tolist() == [1, ST]
    assert ut[1].tolist() == [ST, ST]
    assert ut[2].tolist() == [2, 3]
    assert ut[3].tolist() == [LAYOUT.special("[EOT]"), ST]


def test_overflowing_text_is_an_error_not_a_truncation():
    cfg = FlattenConfig(speech_chunk=4, text_chunk=2)
    dialogue = DialogueStreams(speech(np.zeros(8, int)), np.full(8, SS),
                               (Turn("assistant", 4, 8, np.arange(10)),))
    with pytest.raises(TextOverflowError, match="turn 0 \\(assistant\\)"):
        dialogue_chunks(dialogue, LAYOUT, cfg)


def test_bad_streams_are_reported():
    with pytest.raises(ValueError, match="time-aligned"):
        dialogue_chunks(DialogueStreams(speech([1, 2]), np.full(3, SS), ()), LAYOUT)
    with pytest.raises(ValueError, match="neither speech codes"):
        dialogue_chunks(DialogueStreams(np.array([5, 6]), np.full(2, SS), ()), LAYOUT)
    with pytest.raises(ValueError, match="outside the dialogue"):
        dialogue_chunks(DialogueStreams(speech([1, 2]), np.full(2, SS),
                                        (Turn("user", 0, 5, np.array([1])),)), LAYOUT)


@settings(max_examples=40, deadline=None)
@given(n_speech=st.integers(0, 30), n_text=st.integers(0, 20), seed=st.integers(0, 2**16))
def test_alignment_sequences_round_trip(n_speech, n_text, seed):
    rng = np.random.default_rng(seed)
    s = speech(rng.integers(0, 64, n_speech))
    t = rng.integers(0, 256, n_text).astype(np.int32)
    asr = asr_sequence(LAYOUT, s, t)
    task, s2, t2 = parse_alignment(LAYOUT, asr.tokens)
    assert task == "asr" and np.array_equal(s2, s) and np.array_equal(t2, t)
    # Loss on the transcript and its [EOT] only.
    assert asr.loss_mask.sum() == n_text + 1 and asr.loss_mask[-1]
    assert (asr.streams[asr.loss_mask][:-1] == Stream.USER_TEXT).all()
    tts = tts_sequence(LAYOUT, t, s)
    task, s3, t3 = parse_alignment(LAYOUT, tts.tokens)
    assert task == "tts" and np.array_equal(s3, s) and np.array_equal(t3, t)
    assert tts.loss_mask.sum() == n_speech + 1
    assert (tts.streams[tts.loss_mask][:-1] == Stream.ASSISTANT_SPEECH).all()


@settings(max_examples=40, deadline=None)
@given(n_turns=st.integers(1, 6), user_text_loss=st.booleans(), seed=st.integers(0, 2**16))
def test_half_duplex_round_trip_and_loss(n_turns, user_text_loss, seed):
    rng = np.random.default_rng(seed)
    turns = [SpokenTurn("user" if i % 2 == 0 else "assistant",
                        rng.integers(0, 256, int(rng.integers(0, 6))).astype(np.int32),
                        speech(rng.integers(0, 64, int(rng.integers(0, 9)))))
             for i in range(n_turns)]
    seq = half_duplex_sequence(LAYOUT, turns, FlattenConfig(user_text_loss=user_text_loss))
    back = parse_half_duplex(LAYOUT, seq.tokens)
    assert [t.role for t in back] == [t.role for t in turns]
    for a, b in zip(back, turns):
        np.testing.assert_array_equal(a.text_ids, b.text_ids)
        np.testing.assert_array_equal(a.speech_ids, b.speech_ids)
    assert not seq.loss_mask[seq.streams == Stream.USER_SPEECH].any()
    assert seq.loss_mask[seq.streams == Stream.ASSISTANT_SPEECH].all()
    assert seq.loss_mask[seq.streams == Stream.ASSISTANT_TEXT].all()
    assert (seq.loss_mask[seq.streams == Stream.USER_TEXT] == user_text_loss).all()


def test_sequences_reject_ids_from_the_wrong_range():
    with pytest.raises(ValueError, match="speech span"):
        asr_sequence(LAYOUT, np.array([5]), np.array([1]))
    with pytest.raises(ValueError, match="text span"):
        tts_sequence(LAYOUT, speech([1]), speech([1]))
