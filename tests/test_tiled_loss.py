"""The chunked loss equals the full-logits loss: the per-position losses, the per-stream sums
the logs report, and every gradient, on tied and untied models (fp32, atol 1e-5 / rtol 1e-5)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import SMALL_MODEL

from omniflatten_jax.model import Transformer
from omniflatten_jax.tokens.sequence import Stream
from omniflatten_jax.training.loss import chunked_token_losses, token_losses
from omniflatten_jax.training.step import loss_and_metrics

VOCAB = 384



def packed_batch(b=2, t=40, seed=0):
    rng = np.random.default_rng(seed)
    segments = np.repeat(np.array([[1] * 17 + [2] * 15 + [0] * 8]), b, 0)[:, :t]
    positions = np.concatenate([np.arange(17), np.arange(15), np.zeros(8, int)])[None]
    streams = rng.choice([s.value for s in Stream if s != Stream.PAD], (b, t))
    return {"tokens": jnp.asarray(rng.integers(0, VOCAB, (b, t)), jnp.int32),
            "positions": jnp.asarray(np.repeat(positions, b, 0)[:, :t], jnp.int32),
            "segment_ids": jnp.asarray(segments, jnp.int32),
            "loss_mask": jnp.asarray(rng.random((b, t)) < 0.8) & (segments > 0),
            "streams": jnp.asarray(streams, jnp.int32)}


def test_chunked_token_losses_equal_the_full_ones_with_a_ragged_last_chunk():
    rng = np.random.default_rng(1)
    hidden = jnp.asarray(rng.normal(size=(2, 13, 16)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(16, 50)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 50, (2, 13)), jnp.int32)
    full = token_losses(hidden @ head, targets)
    for chunk in (1, 4, 13, 32):
        np.testing.assert_allclose(chunked_token_losses(hidden, head, targets, chunk), full,
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tied", [True, False])
def test_chunked_loss_and_every_gradient_equal_the_full_logits(tied, on_one_device):
    cfg = dataclasses.replace(SMALL_MODEL, tie_embeddings=tied)
    full_model = Transformer(cfg, VOCAB)
    chunked_model = Transformer(dataclasses.replace(cfg, loss_chunk=8), VOCAB)
    params = full_model.init(jax.random.key(0))
    batch = packed_batch()

    def run(model):
        fn = jax.value_and_grad(lambda p: loss_and_metrics(model, p, batch), has_aux=True)
        return jax.jit(fn)(params)

    (loss_a, metrics_a), grads_a = run(full_model)
    (loss_b, metrics_b), grads_b = run(chunked_model)
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5, atol=1e-5)
    for key, (total, count) in metrics_a["per_stream"].items():
        np.testing.assert_allclose(metrics_b["per_stream"][key][0], total, rtol=1e-5,
                                   atol=1e-5)
        assert int(metrics_b["per_stream"][key][1]) == int(count)
    flat_a = dict(jax.tree_util.tree_leaves_with_path(grads_a))
    for path, g in jax.tree_util.tree_leaves_with_path(grads_b):
        np.testing.assert_allclose(g, flat_a[path], rtol=1e-5, atol=1e-5,
                                   err_msg=jax.tree_util.keystr(path))


def test_utilisation_reports_per_chip_rate_and_mfu_on_known_chips():
    from omniflatten_jax.distributed.accelerators import utilisation

    h200 = utilisation(93_000.0, 6 * 494e6, "NVIDIA H200", 1)
    assert h200["tokens_per_s_per_chip"] == 93_000.0
    np.testing.assert_allclose(h200["mfu"], 93_000 * 6 * 494e6 / 989e12)
    pod = utilisation(8 * 50_000.0, 1e9, "TPU v5", 8)
    assert pod["tokens_per_s_per_chip"] == 50_000.0
    np.testing.assert_allclose(pod["mfu"], 50_000 * 1e9 / 459e12)
    assert "mfu" not in utilisation(1000.0, 1e9, "cpu", 8)  # no peak figure: no MFU


def test_turn_weight_counts_the_assistant_starting_and_stopping(on_one_device):
    """`TurnWeight` finds where the assistant speech stream changes state, across chunks but
    not across packed segments, and adds its weight there only."""
    from omniflatten_jax.training.step import TurnWeight, turn_changes

    s, x, u, a = 300, 290, Stream.USER_SPEECH, Stream.ASSISTANT_SPEECH
    #            0  1  2  3  4  5  6  7  8  9 10 11 12 13
    tokens = [[7, 7, s, s, x, 7, 7, x, s, s, 7, 7, x, s]]
    streams = [[u, u, a, a, a, u, u, a, a, a, u, u, a, a]]
    segments = [[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2]]
    batch = {"tokens": jnp.asarray(tokens, jnp.int32),
             "streams": jnp.asarray(streams, jnp.int32),
             "segment_ids": jnp.asarray(segments, jnp.int32),
             "positions": jnp.asarray([list(range(10)) + list(range(4))], jnp.int32),
             "loss_mask": jnp.asarray(np.asarray(streams) == a)}
    # Targets 4 (s -> x), 8 (x -> s) and 13 (x -> s); 7 continues 4's speech; 12 is the first
    # speech of its segment.
    changes = np.flatnonzero(np.asarray(turn_changes(batch, s))[0]) + 1
    assert changes.tolist() == [4, 8, 13]
    model = Transformer(SMALL_MODEL, VOCAB)
    params = model.init(jax.random.key(0))
    plain, metrics = loss_and_metrics(model, params, batch)
    weighted, weighted_metrics = loss_and_metrics(model, params, batch, TurnWeight(3.0, s))
    per_token = token_losses(model.logits(params, batch["tokens"], batch["positions"],
                                          batch["segment_ids"])[:, :-1], batch["tokens"][:, 1:])
    count = int(metrics["tokens"])
    extra = 2.0 * float(np.sum(np.asarray(per_token)[0, changes - 1])) / count
    np.testing.assert_allclose(weighted, plain + extra, rtol=1e-5)
    # What is reported per stream stays the plain cross-entropy.
    np.testing.assert_allclose(weighted_metrics["per_stream"]["assistant_speech"][0],
                               metrics["per_stream"]["assistant_speech"][0], rtol=1e-6)
