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
from omniflatten_jax.vocab import TokenLayout
from tests.helpers import SMALL_MODEL

LAYOUT = TokenLayout("bytes", 256, 32)
CFG = FlattenConfig(speech_chunk=4, text_chunk=2)


@functools.cache
def model_and_params():
    model = transformer(SMALL_MODEL, LAYOUT.vocab_size)
    return model, model.init(jax.random.key(0))


def user_channel(batch, n_chunks, seed=0):
    rng = np.random.default_rng(seed)
    return LAYOUT.speech_ids(rng.integers(0, 32, (batch, n_chunks * CFG.speech_chunk)))


def recompute_greedy(model, params, chunk, user):
    """The reference: every generated token from a full forward pass over all before it."""
    masks = [legal_ids(LAYOUT, s, CFG) for s, w in chunk.streams[1:] for _ in range(w)]
    seq = np.zeros((user.shape[0], 0), np.int32)
    width = chunk.streams[0][1]
    total = user.shape[1] // width * chunk.chunk_len
    # Causal attention: right padding cannot change earlier logits, so one shape suffices.
    forward = jax.jit(model.logits)
    for lo in range(0, user.shape[1], width):
        seq = np.concatenate([seq, user[:, lo:lo + width]], axis=1)
        for legal in masks:
            padded = np.pad(seq, ((0, 0), (0, total - seq.shape[1])))
            logits = np.asarray(forward(params, jnp.asarray(padded)))[:, seq.shape[1] - 1]
            token = np.where(legal, logits, -np.inf).argmax(-1)
            seq = np.concatenate([seq, token[:, None]], axis=1)
    return seq


@pytest.mark.parametrize("stage", CHUNKED_STAGES)
def test_cached_decoding_equals_recomputing(stage):
    model, params = model_and_params()
    chunk = chunk_layout(stage, CFG)
    user = user_channel(2, 3)
    decoder = DuplexDecoder(model, params, LAYOUT, chunk, CFG, batch=2, max_chunks=3)
    np.testing.assert_array_equal(decoder.run(user), recompute_greedy(model, params, chunk, user))


@pytest.mark.parametrize("stage", CHUNKED_STAGES)
def test_sampled_tokens_are_legal_at_every_position(stage):
    model, params = model_and_params()
    chunk = chunk_layout(stage, CFG)
    n_chunks = 4
    user = user_channel(3, n_chunks, seed=1)
    decoder = DuplexDecoder(model, params, LAYOUT, chunk, CFG, batch=3, max_chunks=n_chunks,
                            sampling=Sampling(temperature=1.5, top_k=50), seed=3)
    flat = decoder.run(user)
    streams = chunk.stream_ids(n_chunks)
    np.testing.assert_array_equal(flat[:, streams == Stream.USER_SPEECH], user)
    for stream, _ in chunk.streams[1:]:
        legal = legal_ids(LAYOUT, stream, CFG)
        assert legal[flat[:, streams == stream]].all(), stream
    # Sampling really samples (and is seeded): another seed gives other tokens.
    again = DuplexDecoder(model, params, LAYOUT, chunk, CFG, batch=3, max_chunks=n_chunks,
                          sampling=Sampling(temperature=1.5, top_k=50), seed=3).run(user)
    other = DuplexDecoder(model, params, LAYOUT, chunk, CFG, batch=3, max_chunks=n_chunks,
                          sampling=Sampling(temperature=1.5, top_k=50), seed=4).run(user)
    np.testing.assert_array_equal(again, flat)
    assert not np.array_equal(other, flat)


def test_decoder_refuses_more_chunks_than_sized():
    model, params = model_and_params()
    decoder = DuplexDecoder(model, params, LAYOUT, chunk_layout("duplex_2", CFG), CFG,
                            batch=1, max_chunks=1)
    decoder.step(user_channel(1, 1))
    with pytest.raises(ValueError, match="sized for 1 chunks"):
        decoder.step(user_channel(1, 1))
