"""Checks that need a GPU: the Pallas GPU and cuDNN attention paths the model selects there.

Skipped on CPU (CI). Run on a GPU machine with
``JAX_PLATFORMS=cuda,cpu python -m pytest -q tests/test_gpu.py`` (conftest otherwise pins CPU).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omniflatten_jax.config import ModelConfig
from omniflatten_jax.inference.duplex import DuplexModel, DuplexSettings
from omniflatten_jax.inference.session import DuplexSession
from omniflatten_jax.model import Transformer
from omniflatten_jax.model.packed_attention import resolve
from omniflatten_jax.training.step import loss_and_metrics

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")

# cuDNN flash attention wants head_dim 64 or 128 and a 16-bit dtype.
CFG = ModelConfig(hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=64, dtype="bfloat16", param_dtype="float32")
VOCAB = 512



def packed_batch(b=2, t=256, seed=0):
    """Rows of three segments each and trailing padding (segment 0), positions per segment."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (b, t))
    bounds = [0, 70, 150, 230]
    segments = np.zeros((b, t), np.int32)
    positions = np.zeros((b, t), np.int32)
    for s, (lo, hi) in enumerate(zip(bounds, bounds[1:]), start=1):
        segments[:, lo:hi] = s
        positions[:, lo:hi] = np.arange(hi - lo)
    return jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments)


def test_gpu_selects_pallas_for_packed_and_cudnn_for_unpacked_16_bit_rows(on_one_device):
    assert resolve("auto", "bfloat16", packed=True) == "pallas_gpu"
    assert resolve("auto", "bfloat16", packed=False) == "cudnn"
    assert resolve("auto", "float32", packed=True) == "xla"


@pytest.mark.parametrize("impl", ["pallas_gpu", "cudnn"])
def test_gpu_attention_matches_xla_on_packed_rows(impl, on_one_device):
    cudnn = Transformer(dataclasses.replace(CFG, attention_impl=impl), VOCAB)
    xla = Transformer(dataclasses.replace(CFG, attention_impl="xla"), VOCAB)
    params = xla.init(jax.random.key(0))
    tokens, positions, segments = packed_batch()
    real = np.asarray(segments) > 0
    batch = {"tokens": tokens, "positions": positions, "segment_ids": segments,
             "loss_mask": jnp.asarray(real), "streams": jnp.ones_like(tokens)}

    def loss(model, p):  # the training loss: it feeds whole (even-length) rows
        return loss_and_metrics(model, p, batch)[0]

    got = jax.jit(cudnn.logits)(params, tokens, positions, segments)
    want = jax.jit(xla.logits)(params, tokens, positions, segments)
    # bf16 activations on both paths: compare where tokens are real, loosely but meaningfully
    # (logits are O(1); a wrong mask or segment leak moves them by far more).
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=5e-2)
    l_c, g_c = jax.jit(jax.value_and_grad(lambda p: loss(cudnn, p)))(params)
    l_x, g_x = jax.jit(jax.value_and_grad(lambda p: loss(xla, p)))(params)
    np.testing.assert_allclose(float(l_c), float(l_x), rtol=1e-2)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_c), jax.tree.leaves(g_x)):
        rel = float(jnp.linalg.norm(a - b) / (jnp.linalg.norm(b) + 1e-12))
        assert rel < 5e-2, (jax.tree_util.keystr(path), rel)
    # An odd length (cuDNN trains on even ones only; the Pallas kernel pads) still trains.
    odd = jax.jit(jax.grad(lambda p: cudnn.logits(p, tokens[:, :255], positions[:, :255],
                                                       segments[:, :255]).sum()))(params)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(odd))


def test_duplex_decoding_runs_on_gpu_in_bf16():
    from omniflatten_jax.config import FlattenConfig
    from omniflatten_jax.config.token_layout import TokenLayout
    from omniflatten_jax.inference.duplex import legal_ids
    from omniflatten_jax.tokens.chunk_layout import chunk_layout
    from omniflatten_jax.tokens.sequence import Stream

    layout = TokenLayout("bytes", 256, 64)
    model = Transformer(CFG, layout.vocab_size)
    params = model.init(jax.random.key(1))
    flatten = FlattenConfig(speech_chunk=10, text_chunk=2)
    chunk = chunk_layout("duplex_3", flatten)
    user = layout.speech_ids(np.random.default_rng(0).integers(0, 64, (2, 50)))
    from omniflatten_jax.model.placement import PlacedModel

    placed = PlacedModel.create(model, params, devices=jax.devices()[:1])
    model = DuplexModel(placed, layout, DuplexSettings(chunk, flatten, context_chunks=5))
    flat = DuplexSession(model, 2).run(user)
    streams = chunk.stream_ids(5)
    np.testing.assert_array_equal(flat[:, streams == Stream.USER_SPEECH], user)
    for stream, _ in chunk.streams[1:]:
        assert legal_ids(layout, stream, flatten)[flat[:, streams == stream]].all()
