"""The decoder of every family: KV cache == full forward, packing, sharded == one device."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omniflatten_jax.config import PRESETS, MeshConfig, ModelConfig
from omniflatten_jax.distributed import sharding
from omniflatten_jax.model import Transformer
from omniflatten_jax.model.packed_attention import resolve
from omniflatten_jax.model.transformer import reset_rows
from tests.reference_loss import masked_cross_entropy

CFG = ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=16, rope_theta=10_000.0)
# Qwen3's heads need not tile the hidden size: 4 heads of 32 over 64.
CONFIGS = {"qwen2": CFG, "qwen3": dataclasses.replace(CFG, family="qwen3", head_dim=32)}
FAMILIES = pytest.mark.parametrize("family", sorted(CONFIGS))
VOCAB = 256
CACHE_TOL = 1e-5  # fp32: cached and full passes differ only by summation order
SHARD_TOL = 1e-5  # fp32: sharded reductions reorder sums



@functools.cache
def model_and_params(family="qwen2"):
    model = Transformer(CONFIGS[family], VOCAB)
    params = model.init(jax.random.key(0))
    if family == "qwen3":  # q/k norm scales away from 1, so that a mix-up shows
        for layer in params["layers"].values():
            for norm in ("q_norm", "k_norm"):
                layer["attn"][norm]["scale"] = 1 + 0.3 * jax.random.normal(
                    jax.random.key(len(norm)), layer["attn"][norm]["scale"].shape)
    return model, params


def tokens(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, shape), jnp.int32)


def test_presets_have_hugging_face_shapes():
    for name, n_params in (("qwen2_0_5b", 494_032_768), ("qwen2_1_5b", 1_543_714_304),
                           ("qwen2_7b", 7_615_616_512)):
        p = PRESETS[name]
        hf_rows = p.layout.text_vocab_size
        model = Transformer(p.model, hf_rows)  # the vocabulary of the Hugging Face checkpoint
        assert model.num_params == n_params, name
    tiny = Transformer(PRESETS["tiny"].model, PRESETS["tiny"].layout.vocab_size)
    assert 1e6 <= tiny.num_params <= 5e6
    assert PRESETS["qwen2_0_5b"].model.tie_embeddings
    assert not PRESETS["qwen2_7b"].model.tie_embeddings


def test_qwen3_preset_counts_what_transformers_counts():
    """Qwen3-0.6B's shape (16 heads of 128 over a hidden size of 1024) against transformers'
    own Qwen3ForCausalLM, built without memory on the meta device."""
    import torch
    import transformers

    from omniflatten_jax.export.hf_config import model_config_to_hf

    p = PRESETS["qwen3_0_6b"]
    hf = model_config_to_hf(p.model, p.layout, "float32")
    hf.update(vocab_size=p.layout.text_vocab_size, pad_token_id=None)  # the HF checkpoint's
    with torch.device("meta"):
        theirs = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.for_model(hf.pop("model_type"), **hf))
    assert type(theirs).__name__ == "Qwen3ForCausalLM"
    n_theirs = sum(t.numel() for t in theirs.parameters())  # tied: the embedding counts once
    assert Transformer(p.model, p.layout.text_vocab_size).num_params == n_theirs == 596_049_920


def test_the_family_is_part_of_the_architecture():
    from omniflatten_jax import checkpoint
    from omniflatten_jax.config import ConfigError, from_dict, to_dict

    old = {k: v for k, v in to_dict(CFG).items() if k != "family"}
    assert from_dict(ModelConfig, old) == CFG  # written before families: a Qwen2
    with pytest.raises(checkpoint.ArchitectureMismatchError,
                       match="family: 'qwen3' in the checkpoint, 'qwen2' in this run"):
        checkpoint.check_architecture(CONFIGS["qwen3"], CFG, "ckpt")
    with pytest.raises(ConfigError, match="model.family='llama' .* choose one of qwen2, qwen3"):
        Transformer(dataclasses.replace(CFG, family="llama"), VOCAB)


@FAMILIES
def test_kv_cache_matches_full_forward(family, on_one_device):
    model, params = model_and_params(family)
    seq = tokens((2, 23))
    full = jax.jit(model.logits)(params, seq)
    extend = jax.jit(model.extend)
    cache = model.init_cache(2, 32)
    pieces = []
    # Prefill, then a chunk of 10, then single tokens: every way the decoder is driven.
    for lo, hi in ((0, 7), (7, 17), (17, 18), (18, 19), (19, 23)):
        logits, cache = extend(params, cache, seq[:, lo:hi])
        pieces.append(logits)
    assert cache.length.tolist() == [23, 23]
    np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, atol=CACHE_TOL, rtol=0)


@FAMILIES
def test_packed_rows_equal_separate_sequences(family, on_one_device):
    model, params = model_and_params(family)
    a, b = tokens((1, 9), 1), tokens((1, 6), 2)
    packed = jnp.concatenate([a, b, jnp.zeros((1, 3), jnp.int32)], 1)
    segments = jnp.asarray([[1] * 9 + [2] * 6 + [0] * 3])
    positions = jnp.asarray([list(range(9)) + list(range(6)) + [0] * 3])
    out = jax.jit(model.logits)(params, packed, positions, segments)
    np.testing.assert_allclose(out[:, :9], model.logits(params, a), atol=1e-5, rtol=0)
    np.testing.assert_allclose(out[:, 9:15], model.logits(params, b), atol=1e-5, rtol=0)
    assert np.isfinite(np.asarray(out)).all()  # padding rows too


def loss_and_grads(model, params, batch):
    def loss_fn(p):
        logits = model.logits(p, batch["tokens"][:, :-1])
        return masked_cross_entropy(logits, batch["tokens"][:, 1:], batch["mask"][:, 1:])[0]
    return jax.value_and_grad(loss_fn)(params)


@FAMILIES
@pytest.mark.parametrize("shape", [(2, 4, 1), (2, 2, 2)], ids=["data2xfsdp4", "data2xfsdp2xtp2"])
def test_sharded_forward_backward_matches_one_device(shape, family, on_one_device):
    model, params = model_and_params(family)
    batch = {"tokens": tokens((8, 17), 3),
             "mask": jnp.asarray(np.random.default_rng(4).random((8, 17)) < 0.7)}
    ref_loss, ref_grads = jax.jit(functools.partial(loss_and_grads, model))(params, batch)

    mesh_cfg = MeshConfig(*shape)
    mesh = sharding.make_mesh(mesh_cfg)
    with sharding.activate(mesh, mesh_cfg.rules):
        p_shard = model.param_shardings(mesh, mesh_cfg.rules)
        b_shard = {k: sharding.batch_sharding(mesh, mesh_cfg.rules, v.shape)
                   for k, v in batch.items()}
        sharded_params = jax.device_put(params, p_shard)
        step = jax.jit(functools.partial(loss_and_grads, model),
                       in_shardings=(p_shard, b_shard), out_shardings=(None, p_shard))
        loss, grads = step(sharded_params, jax.device_put(batch, b_shard))
    # The parameters really are split across devices.
    q = grads["layers"][0]["attn"]["q"]["kernel"]
    assert q.sharding.spec[0] == "fsdp"
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.size < q.size
    np.testing.assert_allclose(loss, ref_loss, atol=SHARD_TOL, rtol=0)
    jax.tree.map(lambda g, r: np.testing.assert_allclose(g, r, atol=SHARD_TOL, rtol=0),
                 grads, ref_grads)


def test_sharded_init_places_params_by_logical_axes():
    model = Transformer(CFG, VOCAB)
    mesh_cfg = MeshConfig(data=1, fsdp=4, tensor=2)
    mesh = sharding.make_mesh(mesh_cfg)
    params = model.init(jax.random.key(0), mesh, mesh_cfg.rules)
    P = jax.sharding.PartitionSpec
    assert params["embed"].sharding.spec == P("tensor", "fsdp")
    assert params["layers"][0]["mlp"]["down"]["kernel"].sharding.spec == P("tensor", "fsdp")
    # kv_heads=2 divides tensor=2; with tensor=8 it would be replicated instead of failing.
    spec = sharding.logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 2, 16),
                                    sharding.make_mesh(MeshConfig(1, 1, 8)), mesh_cfg.rules)
    assert spec == P(None, None, None)


def test_remat_and_bf16_compute_match(on_one_device):
    model, params = model_and_params()
    seq = tokens((2, 12))
    ref = model.logits(params, seq)
    remat = Transformer(dataclasses.replace(CFG, remat=True), VOCAB)
    def grad(m):
        return jax.jit(jax.grad(lambda p: m.logits(p, seq).sum()))(params)

    np.testing.assert_allclose(jax.jit(remat.logits)(params, seq), ref, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4),
                 grad(remat), grad(model))
    bf16 = Transformer(dataclasses.replace(CFG, dtype="bfloat16"), VOCAB)
    out = jax.jit(bf16.logits)(params, seq)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, atol=0.1)  # bf16 activations: loose by design


def test_attention_backend_choice(on_one_device):
    assert resolve("auto", "bfloat16", packed=True) == "xla"  # CPU
    assert resolve("cudnn", "bfloat16", packed=True) == "cudnn"
    devices = np.array(jax.devices()[:1])
    with sharding.activate(jax.sharding.Mesh(devices, ("data",)), ()):
        assert resolve("auto", "bfloat16", packed=True) == "xla"  # the mesh's platform: CPU


def test_left_padded_prompts_decode_like_unpadded_ones(on_one_device):
    model, params = model_and_params()
    short, long = tokens((1, 5), 5), tokens((1, 9), 6)
    pad = jnp.zeros((1, 4), jnp.int32)
    batch = jnp.concatenate([jnp.concatenate([pad, short], 1), long], 0)
    valid = jnp.concatenate([jnp.concatenate([jnp.zeros((1, 4), bool), jnp.ones((1, 5), bool)], 1),
                             jnp.ones((1, 9), bool)], 0)
    cache = model.init_cache(2, 12)
    logits, cache = jax.jit(model.extend)(params, cache, batch, valid)
    nxt = tokens((2, 1), 7)
    step, _ = jax.jit(model.extend)(params, cache, nxt)
    full_short = model.logits(params, jnp.concatenate([short, nxt[:1]], 1))
    full_long = model.logits(params, jnp.concatenate([long, nxt[1:]], 1))
    np.testing.assert_allclose(logits[0, 4:], full_short[0, :5], atol=CACHE_TOL, rtol=0)
    np.testing.assert_allclose(step[0, 0], full_short[0, 5], atol=CACHE_TOL, rtol=0)
    np.testing.assert_allclose(step[1, 0], full_long[0, 9], atol=CACHE_TOL, rtol=0)


def test_rows_advance_and_restart_on_their_own(on_one_device):
    """Row 1 restarts (`reset_rows`) and sits out a call (``rows``) while row 0 goes on; each
    row's logits equal the full forward pass over its own sequence."""
    model, params = model_and_params()
    a, b = tokens((1, 14), 8), tokens((1, 9), 9)
    extend = jax.jit(model.extend)
    cache = model.init_cache(2, 24)
    _, cache = extend(params, cache, jnp.concatenate([a[:, :5], tokens((1, 5), 10)]))
    cache = reset_rows(cache, jnp.asarray([False, True]))
    only_a = jnp.asarray([True, False])
    out_a, cache = extend(params, cache, jnp.concatenate([a[:, 5:9], b[:, :4]]), rows=only_a)
    assert cache.length.tolist() == [9, 0]  # row 1 took nothing
    both, cache = extend(params, cache, jnp.concatenate([a[:, 9:14], b[:, :5]]))
    last, cache = extend(params, cache, jnp.concatenate([a[:, 13:14], b[:, 5:6]]))
    full_a, full_b = model.logits(params, a), model.logits(params, b)
    np.testing.assert_allclose(out_a[0], full_a[0, 5:9], atol=CACHE_TOL, rtol=0)
    np.testing.assert_allclose(both[0], full_a[0, 9:14], atol=CACHE_TOL, rtol=0)
    np.testing.assert_allclose(both[1], full_b[0, :5], atol=CACHE_TOL, rtol=0)
    np.testing.assert_allclose(last[1, 0], full_b[0, 5], atol=CACHE_TOL, rtol=0)
    assert cache.next_position.tolist() == [15, 6]
    # A row that sits out a call longer than its free slots keeps every slot as it was.
    full = extend(params, model.init_cache(2, 8), tokens((2, 7), 11))[1]
    _, after = extend(params, full, tokens((2, 5), 12), rows=jnp.asarray([False, False]))
    for old, new in zip(jax.tree.leaves(full), jax.tree.leaves(after)):
        np.testing.assert_array_equal(old, new)
