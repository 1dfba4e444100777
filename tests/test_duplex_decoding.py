"""Chunk-synchronous duplex decoding: cached equals recomputed, legal ids at every position."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omniflatten_jax.config import DecodingPolicy, FlattenConfig
from omniflatten_jax.config.stages import CHUNKED_STAGES
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.inference.duplex import DuplexModel, DuplexSettings, legal_ids
from omniflatten_jax.inference.policy import SILENCE
from omniflatten_jax.inference.session import DuplexSession
from omniflatten_jax.model import transformer
from omniflatten_jax.model.placement import PlacedModel
from omniflatten_jax.tokens.chunk_layout import chunk_layout
from omniflatten_jax.tokens.sequence import Stream
from tests.helpers import SMALL_MODEL

LAYOUT = TokenLayout("bytes", 256, 32)
CFG = FlattenConfig(speech_chunk=4, text_chunk=2)
SAMPLED = DecodingPolicy(text_temperature=1.5, speech_temperature=1.5, text_top_k=50,
                         speech_top_k=50, seed=3)



@functools.cache
def model_and_params():
    model = transformer(SMALL_MODEL, LAYOUT.vocab_size)
    return model, model.init(jax.random.key(0))


@functools.cache
def placed(placement="sharded"):
    """The parameters placed once, over all 8 fake devices (FSDP, or replicated)."""
    model, params = model_and_params()
    return PlacedModel.create(model, params, placement=placement)


def session(chunk, batch, context_chunks, keep_chunks=None, policy=DecodingPolicy(),
            placement="sharded"):
    model = DuplexModel(placed(placement), LAYOUT,
                        DuplexSettings(chunk, CFG, context_chunks, policy))
    return DuplexSession(model, batch, keep_chunks=keep_chunks)


def user_channel(batch, n_chunks, seed=0):
    rng = np.random.default_rng(seed)
    return LAYOUT.speech_ids(rng.integers(0, 32, (batch, n_chunks * CFG.speech_chunk)))


def recompute_greedy(model, params, chunk, user, context=None, keep=None,
                     policy=DecodingPolicy()):
    """The reference: every generated token from a full forward pass over the context before
    it, decided as `policy` says (greedy content), in numpy. With `context`, the context starts
    at chunk `start`, which jumps to ``c - keep`` when chunk c would make it longer than
    `context` chunks (the decoder's sliding window)."""
    rows = [(s, legal_ids(LAYOUT, s, CFG), LAYOUT.special(SILENCE[s]))
            for s, w in chunk.streams[1:] for _ in range(w)]
    seq = np.zeros((user.shape[0], 0), np.int32)
    width, n = chunk.streams[0][1], chunk.chunk_len
    n_chunks = user.shape[1] // width
    context = context or n_chunks
    start = 0
    speaking = {s: np.zeros(user.shape[0], bool) for s, _ in chunk.streams[1:]}
    quiet = {s: np.zeros(user.shape[0]) for s, _ in chunk.streams[1:]}
    # Causal attention: right padding cannot change earlier logits, so one shape suffices.
    forward = jax.jit(model.logits)
    for c in range(n_chunks):
        if c - start == context:
            start = c - keep
        seq = np.concatenate([seq, user[:, c * width:(c + 1) * width]], axis=1)
        for stream, legal, silent in rows:
            window = seq[:, start * n:]
            padded = np.pad(window, ((0, 0), (0, context * n - window.shape[1])))
            logits = np.asarray(forward(params, jnp.asarray(padded)), np.float64)
            logits = np.where(legal, logits[:, window.shape[1] - 1], -np.inf)
            if policy.speak_rule == "token":
                token = logits.argmax(-1)
            else:
                p = np.exp(logits - logits.max(-1, keepdims=True))
                log_quiet = np.log(p[:, silent] / p.sum(-1))
                accumulated = policy.onset_memory * quiet[stream] + log_quiet
                speak = np.where(speaking[stream], np.exp(log_quiet) <= policy.stop_threshold,
                                 1 - np.exp(accumulated) >= policy.onset_threshold)
                logits[:, silent] = -np.inf
                token = np.where(speak, logits.argmax(-1), silent)
                speaking[stream] = speak
                quiet[stream] = np.where(speak, 0.0, accumulated)
            seq = np.concatenate([seq, token[:, None].astype(np.int32)], axis=1)
    return seq


@pytest.mark.parametrize("stage", CHUNKED_STAGES)
def test_cached_decoding_equals_recomputing(stage, on_one_device):
    model, params = model_and_params()
    chunk = chunk_layout(stage, CFG)
    user = user_channel(2, 3)
    decoder = session(chunk, 2, 3)
    np.testing.assert_array_equal(decoder.run(user), recompute_greedy(model, params, chunk, user))


# An untrained model gives each of its 33 legal speech ids about 1/33: thresholds near that
# make both decisions happen, so the test sees onsets, stops and accumulated onsets.
NEAR_CHANCE = [DecodingPolicy(speak_rule="token"),
               DecodingPolicy(onset_threshold=0.9698, stop_threshold=0.0302),
               DecodingPolicy(onset_threshold=0.99, stop_threshold=0.0303, onset_memory=0.7)]


@pytest.mark.parametrize("policy", NEAR_CHANCE, ids=["token", "thresholds", "memory"])
def test_speak_decisions_equal_the_reference(policy, on_one_device):
    """The engine's speak/listen rule, its state carried across chunks and slides, equals a
    numpy reading of `DecodingPolicy`'s definition over full forward passes."""
    model, params = model_and_params()
    chunk = chunk_layout("duplex_2", CFG)
    user = user_channel(3, 6, seed=7)
    decoder = session(chunk, 3, 3, keep_chunks=1, policy=policy)
    got = decoder.run(user)
    np.testing.assert_array_equal(got, recompute_greedy(model, params, chunk, user, 3, 1,
                                                        policy))
    speech = got[:, chunk.stream_ids(6) == Stream.ASSISTANT_SPEECH]
    silent = speech == LAYOUT.special("<silent_speech>")
    if policy.speak_rule == "threshold":  # both decisions were taken, so both were tested
        assert silent.any() and (~silent).any(), silent.mean()


@pytest.mark.parametrize("stage", CHUNKED_STAGES)
def test_sampled_tokens_are_legal_at_every_position(stage):
    model, params = model_and_params()
    chunk = chunk_layout(stage, CFG)
    n_chunks = 4
    user = user_channel(3, n_chunks, seed=1)
    decoder = session(chunk, 3, n_chunks, policy=SAMPLED)
    flat = decoder.run(user)
    streams = chunk.stream_ids(n_chunks)
    np.testing.assert_array_equal(flat[:, streams == Stream.USER_SPEECH], user)
    for stream, _ in chunk.streams[1:]:
        legal = legal_ids(LAYOUT, stream, CFG)
        assert legal[flat[:, streams == stream]].all(), stream
    # Sampling really samples (and is seeded): another seed gives other tokens.
    again = session(chunk, 3, n_chunks, policy=SAMPLED).run(user)
    other = session(chunk, 3, n_chunks,
                    policy=dataclasses.replace(SAMPLED, seed=4)).run(user)
    np.testing.assert_array_equal(again, flat)
    assert not np.array_equal(other, flat)


@pytest.mark.parametrize("keep", [0, 1, 2])
def test_sliding_context_equals_recomputing_over_the_window(keep, on_one_device):
    model, params = model_and_params()
    chunk = chunk_layout("duplex_3", CFG)
    user = user_channel(2, 7, seed=2)
    decoder = session(chunk, 2, 3, keep_chunks=keep)
    got = decoder.run(user)
    assert decoder.slides == {0: 2, 1: 2, 2: 4}[keep]  # at chunks 3,6 | 3,5 | 3,4,5,6
    np.testing.assert_array_equal(got, recompute_greedy(model, params, chunk, user, 3, keep))


def test_decoder_refuses_a_partial_chunk():
    model, params = model_and_params()
    decoder = session(chunk_layout("duplex_2", CFG), 1, 2)
    with pytest.raises(ValueError, match="not whole chunks"):
        decoder.run(user_channel(1, 2)[:, :-1])


@pytest.mark.parametrize("placement", ["sharded", "replicated"])
def test_chunk_loop_makes_no_implicit_transfer(placement, on_one_device):
    """After set-up, decoding chunks (context slides included) moves nothing implicitly: the
    parameters stay on the 8 devices, each chunk's ids go up and come back explicitly."""
    model, params = model_and_params()
    p = placed(placement)
    embed = p.params["embed"]
    assert len(embed.sharding.device_set) == 8
    assert embed.sharding.is_fully_replicated == (placement == "replicated")
    chunk = chunk_layout("duplex_3", CFG)
    user = user_channel(2, 7, seed=5)
    decoder = session(chunk, 2, 3, keep_chunks=1, placement=placement)
    decoder.compile()
    with jax.transfer_guard("disallow"):
        with pytest.raises(Exception, match="[Dd]isallowed"):  # the guard is live here
            jax.jit(lambda x: x + 1)(np.ones(2))
        got = decoder.run(user)
    assert decoder.slides == 2
    np.testing.assert_array_equal(got, recompute_greedy(model, params, chunk, user, 3, 1))


def test_rows_are_conversations_that_start_and_end_on_their_own(on_one_device):
    """Row 0 holds one conversation for 7 chunks (sliding twice); row 1 holds another for 2
    chunks, sits one out, then starts a third that slides at its own time. Each equals the
    reference decoding of that conversation alone, and a row's sampled draws depend on its
    own seed only."""
    model, params = model_and_params()
    chunk = chunk_layout("duplex_3", CFG)
    a, b, c = (user_channel(1, 7, seed=s) for s in (11, 12, 13))
    width = CFG.speech_chunk
    decoder = session(chunk, 2, 3, keep_chunks=1)
    decoder.start([0, 1])
    got = {0: [], 1: [], 2: []}
    for i in range(7):
        if i == 2:
            decoder.end(1)
        if i == 3:
            decoder.start(1)
        conversation = 2 if i >= 3 else 1
        user = np.concatenate([a[:, i * width:(i + 1) * width],
                               (c if conversation == 2 else b)[:, (i - 3 * (conversation == 2))
                                                                * width:][:, :width]])
        out = decoder.step(user)
        got[0].append(np.concatenate([user[0], out[0]]))
        if i != 2:
            got[conversation].append(np.concatenate([user[1], out[1]]))
    reference = functools.partial(recompute_greedy, model, params, chunk, context=3, keep=1)
    np.testing.assert_array_equal(np.concatenate(got[0]), reference(a)[0])
    np.testing.assert_array_equal(np.concatenate(got[1]), reference(b[:, :2 * width])[0])
    np.testing.assert_array_equal(np.concatenate(got[2]), reference(c[:, :4 * width])[0])
    # Sampled: a conversation's draws are its seed's, whichever row and neighbours it has.
    sampled = session(chunk, 2, 4, policy=SAMPLED)
    pair = sampled.run(np.concatenate([a[:, :3 * width], b[:, :3 * width]]), seeds=[5, 6])
    alone = session(chunk, 1, 4, policy=SAMPLED).run(b[:, :3 * width], seeds=[6])
    np.testing.assert_array_equal(pair[1], alone[0])
