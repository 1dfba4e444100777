"""Hugging Face import/export against transformers itself, on tiny random models of every
family (Qwen2, Qwen3; tied and untied embeddings)."""

import json
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from omniflatten_jax import checkpoint
from omniflatten_jax.config.token_layout import LayoutMismatchError, TokenLayout
from omniflatten_jax.export import hf_config
from omniflatten_jax.export.from_hf import import_hf
from omniflatten_jax.model import transformer
from tests.helpers import run_command

HF_TOL = 1e-4  # JAX vs PyTorch, fp32 (different kernels and summation orders)
ROUND_TRIP_TOL = 1e-5  # HF -> ours -> HF: the same numbers moved twice
TEXT_VOCAB = 256



def run_cli(name, *args):
    result = run_command(name, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def tiny_hf_model(family: str, tied: bool):
    """A random tiny transformers model; Qwen3's heads are 32 wide over a hidden size of 64
    (4 heads), so nothing can assume ``head_dim x heads == hidden``."""
    shape = dict(vocab_size=TEXT_VOCAB, hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 tie_word_embeddings=tied, rope_theta=10_000.0, max_position_embeddings=256)
    if family == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**shape)).eval()
    return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**shape, head_dim=32)).eval()


@pytest.fixture(scope="module", params=[("qwen2", True), ("qwen2", False), ("qwen3", True),
                                        ("qwen3", False)],
                ids=["qwen2-tied", "qwen2-untied", "qwen3-tied", "qwen3-untied"])
def converted(request, tmp_path_factory):
    """A random HF model, imported by the from_hf CLI and exported again by the to_hf CLI."""
    family, tied = request.param
    root = tmp_path_factory.mktemp(f"{family}-{'tied' if tied else 'untied'}")
    torch.manual_seed(0)
    hf_model = tiny_hf_model(family, tied)
    with torch.no_grad():  # random biases and norms, so a mix-up cannot hide behind 0s and 1s
        for name, p in hf_model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf_model.save_pretrained(root / "hf")
    run_cli("from_hf", "--hf_dir", str(root / "hf"), "--out",
            str(root / "ckpt"), "--num_speech_codes", "64", "--text_tokenizer", "bytes")
    run_cli("to_hf", "--checkpoint", str(root / "ckpt"), "--out",
            str(root / "export"))
    params, meta, _ = checkpoint.load_params(root / "ckpt")
    return root, hf_model, params, meta


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids))).logits.numpy()


def greedy_jax(model, params, prompt, steps):
    cache = model.init_cache(prompt.shape[0], prompt.shape[1] + steps)
    logits, cache = model.extend(params, cache, jnp.asarray(prompt))
    out = []
    for _ in range(steps):
        token = jnp.argmax(logits[:, -1], -1)[:, None]
        out.append(token)
        logits, cache = model.extend(params, cache, token)
    return np.asarray(jnp.concatenate(out, 1))


def greedy_hf(model, prompt, steps):
    ids = np.asarray(prompt)
    for _ in range(steps):
        ids = np.concatenate([ids, hf_logits(model, ids)[:, -1].argmax(-1)[:, None]], 1)
    return ids[:, prompt.shape[1]:]


def test_imported_model_matches_transformers(converted, on_one_device):
    _, hf_model, params, meta = converted
    model = transformer(meta.model, meta.layout.vocab_size)
    ids = np.random.default_rng(0).integers(0, TEXT_VOCAB, (2, 19))
    ours = np.asarray(model.logits(params, jnp.asarray(ids)))
    np.testing.assert_allclose(ours[..., :TEXT_VOCAB], hf_logits(hf_model, ids), atol=HF_TOL,
                               rtol=0)
    assert meta.layout.speech_offset == TEXT_VOCAB and meta.layout.num_speech_codes == 64
    assert meta.lineage[0]["kind"] == "hf_import"
    assert meta.model.family == hf_model.config.model_type
    assert meta.model.head_dim == getattr(hf_model.config, "head_dim", 16)  # Qwen2: 64 / 4


def test_export_loads_in_transformers_with_equal_logits(converted, on_one_device):
    root, _, params, meta = converted
    exported, info = transformers.AutoModelForCausalLM.from_pretrained(
        root / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert exported.config.model_type == meta.model.family
    assert exported.config.vocab_size == meta.layout.used_size  # speech + specials kept
    model = transformer(meta.model, meta.layout.vocab_size)
    ids = np.random.default_rng(1).integers(0, meta.layout.used_size, (2, 17))
    ours = np.asarray(model.logits(params, jnp.asarray(ids)))[..., :meta.layout.used_size]
    np.testing.assert_allclose(ours, hf_logits(exported.eval(), ids), atol=HF_TOL, rtol=0)
    prompt = ids[:, :5]
    np.testing.assert_array_equal(greedy_jax(model, params, prompt, 8),
                                  greedy_hf(exported, prompt, 8))
    assert TokenLayout.load(root / "export") == meta.layout
    gen = json.loads((root / "export" / "generation_config.json").read_text())
    assert meta.layout.special("[EOS]") in gen["eos_token_id"]


def test_round_trip_reproduces_the_original_logits(converted):
    root, hf_model, _, _ = converted
    exported = transformers.AutoModelForCausalLM.from_pretrained(root / "export").eval()
    ids = np.random.default_rng(2).integers(0, TEXT_VOCAB, (2, 21))
    np.testing.assert_allclose(hf_logits(exported, ids)[..., :TEXT_VOCAB],
                               hf_logits(hf_model, ids), atol=ROUND_TRIP_TOL, rtol=0)


def test_step_folder_and_checkpoints_folder_are_both_accepted(converted, tmp_path):
    root, _, _, _ = converted
    assert checkpoint.resolve(root / "ckpt") == (str(root / "ckpt"), 0)
    assert checkpoint.resolve(root / "ckpt" / "0") == (str(root / "ckpt"), 0)
    with pytest.raises(FileNotFoundError, match="no checkpoint steps"):
        checkpoint.resolve(tmp_path)


def test_reimporting_our_export_keeps_its_layout(converted, tmp_path):
    root, _, params, meta = converted
    import_hf(str(root / "export"), str(tmp_path / "again"))
    again, meta2, _ = checkpoint.load_params(tmp_path / "again", layout=meta.layout)
    assert meta2.layout == meta.layout
    used = meta.layout.used_size
    np.testing.assert_array_equal(np.asarray(again["embed"])[:used],
                                  np.asarray(params["embed"])[:used])
    with pytest.raises(LayoutMismatchError, match="speech codes"):
        import_hf(str(root / "export"), str(tmp_path / "bad"), num_speech_codes=128)
    with pytest.raises(LayoutMismatchError, match="num_speech_codes"):
        checkpoint.load_params(tmp_path / "again",
                               layout=TokenLayout("bytes", TEXT_VOCAB, 128))


def test_transformers_4_and_5_config_forms():
    v5 = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "rope_parameters": {"rope_type": "default", "rope_theta": 5e5},
          "tie_word_embeddings": True, "vocab_size": 256}
    v4 = {k: v for k, v in v5.items() if k != "rope_parameters"} | {"rope_theta": 5e5}
    assert hf_config.model_config_from_hf(v5, "v5") == hf_config.model_config_from_hf(v4, "v4")
    assert hf_config.model_config_from_hf(v4, "v4").rope_theta == 5e5
    with pytest.raises(ValueError, match="cfg.json: model_type is 'llama'; supported: 'qwen2'"):
        hf_config.model_config_from_hf(v4 | {"model_type": "llama"}, "cfg.json")
    with pytest.raises(ValueError, match="Qwen2 ties them"):
        hf_config.model_config_from_hf(v4 | {"head_dim": 32}, "cfg.json")
    qwen3 = v4 | {"model_type": "qwen3", "head_dim": 32}
    assert hf_config.model_config_from_hf(qwen3, "cfg.json").family == "qwen3"
    with pytest.raises(ValueError, match="attention_bias"):
        hf_config.model_config_from_hf(qwen3 | {"attention_bias": True}, "cfg.json")
    with pytest.raises(ValueError, match="head_dim"):
        hf_config.model_config_from_hf(v4 | {"model_type": "qwen3"}, "cfg.json")
    with pytest.raises(ValueError, match="sliding"):
        hf_config.model_config_from_hf(v4 | {"use_sliding_window": True}, "cfg.json")


def test_import_reports_missing_and_unknown_tensors(converted, tmp_path):
    root, _, _, _ = converted
    from safetensors.numpy import load_file, save_file
    tensors = load_file(root / "hf" / "model.safetensors")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((root / "hf" / "config.json").read_text())
    save_file({k: v for k, v in tensors.items() if "layers.1.mlp.up" not in k},
              broken / "model.safetensors")
    with pytest.raises(ValueError, match="layers.1.mlp.up_proj.weight is missing"):
        import_hf(str(broken), str(tmp_path / "out"), text_tokenizer="bytes")
    save_file(tensors | {"model.extra.weight": np.zeros(3, np.float32)},
              broken / "model.safetensors")
    with pytest.raises(ValueError, match="model.extra.weight"):
        import_hf(str(broken), str(tmp_path / "out2"), text_tokenizer="bytes")
    os.remove(broken / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        import_hf(str(broken), str(tmp_path / "out3"), text_tokenizer="bytes")


def test_from_hf_on_a_truncated_or_damaged_download_names_the_file(converted, tmp_path):
    root, _, _, _ = converted
    whole = (root / "hf" / "model.safetensors").read_bytes()
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "config.json").write_text((root / "hf" / "config.json").read_text())
    for name, data in [("truncated", whole[:len(whole) // 2]), ("garbage", b"<html>" * 10)]:
        (cut / "model.safetensors").write_bytes(data)
        with pytest.raises(ValueError, match=re.escape(
                f"{cut / 'model.safetensors'} is not a whole safetensors file")):
            import_hf(str(cut), str(tmp_path / name), text_tokenizer="bytes")
        assert not (tmp_path / name).exists()  # nothing written


def test_transformers_4_config_file_imports_the_same_weights(converted, tmp_path):
    root, _, params, _ = converted
    old = tmp_path / "v4"
    old.mkdir()
    config = json.loads((root / "hf" / "config.json").read_text())
    theta = config.pop("rope_parameters")["rope_theta"]
    (old / "config.json").write_text(json.dumps(config | {"rope_theta": theta,
                                                          "transformers_version": "4.45.0"}))
    (old / "model.safetensors").symlink_to(root / "hf" / "model.safetensors")
    import_hf(str(old), str(tmp_path / "ckpt"), num_speech_codes=64, text_tokenizer="bytes")
    again, meta, _ = checkpoint.load_params(tmp_path / "ckpt")
    assert meta.model.rope_theta == theta
    np.testing.assert_array_equal(np.asarray(again["layers"][1]["attn"]["k"]["kernel"]),
                                  np.asarray(params["layers"][1]["attn"]["k"]["kernel"]))
