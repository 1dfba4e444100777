"""Chunk-synchronous duplex decoding: cached equals recomputed, legal ids at every position."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omniflatten_jax.config import FlattenConfig
from omniflatten_jax.flatten import CHUNKED_STAGES, Stream, chunk_layout
from omniflatten_jax.inference.duplex import DuplexDecoder, Sampling, legal_ids
from omniflatten_jax.model import transformer
from omniflatten_jax.placement import PlacedModel
from omniflatten_jax.vocab import TokenLayout
from tests.helpers import SMALL_MODEL

LAYOUT = TokenLayout("bytes", 256, 32)
CFG = FlattenConfig(speech_chunk=4, text_chunk=2)


@functools.cache
def model_and_params():
    model = transformer(SMALL_MODEL, LAYOUT.vocab_size)
    return model, model.init(jax.random.key(0))


@functools.cache
def placed(placement="sharded"):
    """The parameters placed once, over all 8 fake devices (FSDP, or replicated)."""
    model, params = model_and_params()
    return PlacedModel.create(model, params, placement=placement)


def user_channel(batch, n_chunks, seed=0):
    rng = np.random.default_rng(seed)
    return LAYOUT.speech_ids(rng.integers(0, 32, (batch, n_chunks * CFG.speech_chunk)))


def recompute_greedy(model, params, chunk, user, context=None, keep=None):
    """The reference: every generated token from a full forward pass over the context before
    it. With `context`, the context starts at chunk `start`, which jumps to ``c - keep`` when
    chunk c would make it longer than `context` chunks (the decoder's sliding window)."""
    masks = [legal_ids(LAYOUT, s, CFG) for s, w in chunk.streams[1:] for _ in range(w)]
    seq = np.zeros((user.shape[0], 0), np.int32)
    width, n = chunk.streams[0][1], chunk.chunk_len
    n_chunks = user.shape[1] // width
    context = context or n_chunks
    start = 0
    # Causal attention: right padding cannot change earlier logits, so one shape suffices.
    forward = jax.jit(model.logits)
    for c in range(n_chunks):
        if c - start == context:
            start = c - keep
        seq = np.concatenate([seq, user[:, c * width:(c + 1) * width]], axis=1)
        for legal in masks:
            window = seq[:, start * n:]
            padded = np.pad(window, ((0, 0), (0, context * n - window.shape[1])))
            logits = np.asarray(forward(params, jnp.asarray(padded)))[:, window.shape[1] - 1]
            token = np.where(legal, logits, -np.inf).argmax(-1)
            seq = np.concatenate([seq, token[:, None]], axis=1)
    return seq


@pytest.mark.parametrize("stage", CHUNKED_STAGES)
def test_cached_decoding_equals_recomputing(stage):
    model, params = model_and_params()
    chunk = chunk_layout(stage, CFG)
    user = user_channel(2, 3)
    decoder = DuplexDecoder(placed(), LAYOUT, chunk, CFG, batch=2, context_chunks=3)
    np.testing.assert_array_equal(decoder.run(user), recompute_greedy(model, params, chunk, user))


@pytest.mark.parametrize("stage", CHUNKED_STAGES)
def test_sampled_tokens_are_legal_at_every_position(stage):
    model, params = model_and_params()
    chunk = chunk_layout(stage, CFG)
    n_chunks = 4
    user = user_channel(3, n_chunks, seed=1)
    decoder = DuplexDecoder(placed(), LAYOUT, chunk, CFG, batch=3, context_chunks=n_chunks,
                            sampling=Sampling(temperature=1.5, top_k=50), seed=3)
    flat = decoder.run(user)
    streams = chunk.stream_ids(n_chunks)
    np.testing.assert_array_equal(flat[:, streams == Stream.USER_SPEECH], user)
    for stream, _ in chunk.streams[1:]:
        legal = legal_ids(LAYOUT, stream, CFG)
        assert legal[flat[:, streams == stream]].all(), stream
    # Sampling really samples (and is seeded): another seed gives other tokens.
    again = DuplexDecoder(placed(), LAYOUT, chunk, CFG, batch=3, context_chunks=n_chunks,
                          sampling=Sampling(temperature=1.5, top_k=50), seed=3).run(user)
    other = DuplexDecoder(placed(), LAYOUT, chunk, CFG, batch=3, context_chunks=n_chunks,
                          sampling=Sampling(temperature=1.5, top_k=50), seed=4).run(user)
    np.testing.assert_array_equal(again, flat)
    assert not np.array_equal(other, flat)


@pytest.mark.parametrize("keep", [0, 1, 2])
def test_sliding_context_equals_recomputing_over_the_window(keep):
    model, params = model_and_params()
    chunk = chunk_layout("duplex_3", CFG)
    user = user_channel(2, 7, seed=2)
    decoder = DuplexDecoder(placed(), LAYOUT, chunk, CFG, batch=2, context_chunks=3,
                            keep_chunks=keep)
    got = decoder.run(user)
    assert decoder.slides == {0: 2, 1: 2, 2: 4}[keep]  # at chunks 3,6 | 3,5 | 3,4,5,6
    np.testing.assert_array_equal(got, recompute_greedy(model, params, chunk, user, 3, keep))


def test_decoder_refuses_a_partial_chunk():
    model, params = model_and_params()
    decoder = DuplexDecoder(placed(), LAYOUT, chunk_layout("duplex_2", CFG), CFG,
                            batch=1, context_chunks=2)
    with pytest.raises(ValueError, match="not whole chunks"):
        decoder.run(user_channel(1, 2)[:, :-1])


@pytest.mark.parametrize("placement", ["sharded", "replicated"])
def test_chunk_loop_makes_no_implicit_transfer(placement):
    """After set-up, decoding chunks (context slides included) moves nothing implicitly: the
    parameters stay on the 8 devices, each chunk's ids go up and come back explicitly."""
    model, params = model_and_params()
    p = placed(placement)
    embed = p.params["embed"]
    assert len(embed.sharding.device_set) == 8
    assert embed.sharding.is_fully_replicated == (placement == "replicated")
    chunk = chunk_layout("duplex_3", CFG)
    user = user_channel(2, 7, seed=5)
    decoder = DuplexDecoder(p, LAYOUT, chunk, CFG, batch=2, context_chunks=3, keep_chunks=1)
    decoder.compile()
    with jax.transfer_guard("disallow"):
        with pytest.raises(Exception, match="[Dd]isallowed"):  # the guard is live here
            jax.jit(lambda x: x + 1)(np.ones(2))
        got = decoder.run(user)
    assert decoder.slides == 2
    np.testing.assert_array_equal(got, recompute_greedy(model, params, chunk, user, 3, 1))
