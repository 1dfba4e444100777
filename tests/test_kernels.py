"""Packed flash attention and scanned, rematerialised layers against their references.

The TPU splash and Pallas GPU kernels run here in Pallas interpret mode (CPU): the same
kernel code, with the same block masks and segment ids, as on the accelerator. fp32
throughout; tolerances are summation-order noise.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omniflatten_jax.config import ConfigError, ModelConfig
from omniflatten_jax.distributed import sharding
from omniflatten_jax.model import Transformer
from omniflatten_jax.model.packed_attention import packed_attention, reference
from omniflatten_jax.training.step import loss_and_metrics

KERNELS = ["splash", "pallas_gpu"]
OUT_TOL = 2e-5  # attention outputs are O(1)
GRAD_RTOL = 2e-4  # relative (norm) error of a gradient
CFG = ModelConfig(hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4,
                  num_kv_heads=2, head_dim=16, rope_theta=10_000.0)
VOCAB = 256



def packed_rows(b, t, bounds, seed=0):
    """Rows of segments at `bounds` (then padding, segment 0), positions counted per segment."""
    segments = np.zeros((b, t), np.int32)
    positions = np.zeros((b, t), np.int32)
    for s, (lo, hi) in enumerate(zip(bounds, bounds[1:]), start=1):
        segments[:, lo:hi] = s
        positions[:, lo:hi] = np.arange(hi - lo)
    tokens = np.random.default_rng(seed).integers(0, VOCAB, (b, t))
    return jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments)


def qkv(b, t, h, kv, d, seed=0):
    r = np.random.default_rng(seed)
    return (jnp.asarray(r.normal(size=(b, t, n, d)), jnp.float32) for n in (h, kv, kv))


def rel(a, b):
    return float(jnp.linalg.norm(a - b) / (jnp.linalg.norm(b) + 1e-12))


@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("t", [256, 200])  # 200: the kernel pads to its block of 128
def test_kernel_matches_the_dense_mask_on_packed_rows(impl, t, on_one_device):
    q, k, v = qkv(2, t, 4, 2, 32)
    _, _, segments = packed_rows(2, t, [0, 70, 150, 190])
    real = np.asarray(segments) > 0

    def masked_sum(attend):
        return lambda q, k, v: jnp.sum(jnp.where(real[..., None, None],
                                                 attend(q, k, v, segments), 0) ** 2)

    got = jax.jit(functools.partial(packed_attention, impl=impl))(q, k, v, segments)
    want = reference(q, k, v, segments)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=OUT_TOL)
    grads = jax.jit(jax.grad(masked_sum(functools.partial(packed_attention, impl=impl)),
                             argnums=(0, 1, 2)))(q, k, v)
    ref_grads = jax.grad(masked_sum(reference), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", grads, ref_grads):
        assert rel(a, b) < GRAD_RTOL, (name, rel(a, b))


def test_no_segment_leaks_through_the_kernel(on_one_device):
    """Changing one segment's keys must not move another segment's outputs."""
    q, k, v = qkv(1, 256, 4, 2, 32)
    _, _, segments = packed_rows(1, 256, [0, 128, 256])
    attend = jax.jit(functools.partial(packed_attention, impl="splash"))
    before = attend(q, k, v, segments)
    after = attend(q, k.at[:, :128].add(1.0), v.at[:, :128].add(1.0), segments)
    np.testing.assert_array_equal(np.asarray(before[:, 128:]), np.asarray(after[:, 128:]))
    assert not np.allclose(np.asarray(before[:, :128]), np.asarray(after[:, :128]))


@functools.cache
def params():
    return Transformer(CFG, VOCAB).init(jax.random.key(0))


def train_loss_and_grads(cfg, mesh=None):
    model = Transformer(cfg, VOCAB)
    tokens, positions, segments = packed_rows(4, 128, [0, 50, 90, 120], seed=1)
    batch = {"tokens": tokens, "positions": positions, "segment_ids": segments,
             "loss_mask": segments > 0, "streams": jnp.ones_like(tokens)}

    def loss(p):
        return loss_and_metrics(model, p, batch)[0]

    if mesh is None:
        return jax.jit(jax.value_and_grad(loss))(params())
    rules = (("batch", "data"), ("act_heads", "tensor"), ("act_kv_heads", "tensor"))
    with sharding.activate(mesh, rules):  # the weights as host arrays: placed by this mesh
        return jax.jit(jax.value_and_grad(loss))(jax.device_get(params()))


@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("tensor", [2, 4])  # 4: the 2 KV heads cannot split, query heads do
def test_model_trains_the_same_with_each_kernel_on_a_mesh(impl, tensor):
    """The kernels under shard_map (rows over `data`, heads over `tensor`) give the training
    loss and every gradient of the dense-mask model (on one device)."""
    with sharding.on_one_device():
        want_loss, want = jax.device_get(
            train_loss_and_grads(dataclasses.replace(CFG, attention_impl="xla")))
    mesh = jax.make_mesh((2, tensor), ("data", "tensor"), devices=jax.devices()[:2 * tensor],
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)
    got_loss, got = jax.device_get(
        train_loss_and_grads(dataclasses.replace(CFG, attention_impl=impl), mesh))
    np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        assert rel(a, b) < GRAD_RTOL, (jax.tree_util.keystr(path), rel(a, b))


@pytest.mark.parametrize("remat", ["none", "minimal", "save_matmuls", "full"])
def test_scanned_layers_equal_the_loop_under_every_remat_policy(remat, on_one_device):
    want_loss, want = train_loss_and_grads(
        dataclasses.replace(CFG, scan_layers=False, remat="none", attention_impl="xla"))
    got_loss, got = train_loss_and_grads(
        dataclasses.replace(CFG, scan_layers=True, remat=remat, attention_impl="xla"))
    np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_scanning_keeps_the_parameter_tree_and_old_remat_settings_read():
    loop = Transformer(dataclasses.replace(CFG, scan_layers=False), VOCAB)
    scan = Transformer(dataclasses.replace(CFG, scan_layers=True), VOCAB)
    assert jax.tree.structure(loop.abstract_params) == jax.tree.structure(scan.abstract_params)
    assert "layers" in scan.abstract_params and len(scan.abstract_params["layers"]) == 3
    assert dataclasses.replace(CFG, remat=True).remat == "full"
    assert dataclasses.replace(CFG, remat=False).remat == "none"
    with pytest.raises(ConfigError, match="remat must be one of"):
        dataclasses.replace(CFG, remat="some")
    with pytest.raises(ConfigError, match="attention_impl must be one of"):
        dataclasses.replace(CFG, attention_impl="flash")
