"""Orbax checkpoint -> Hugging Face folder of its family (`Qwen2ForCausalLM`,
`Qwen3ForCausalLM`: `model.families`) that transformers loads as is.

    python experiments/to_hf.py --checkpoint workdir/alignment/checkpoints --out hf/

Writes `config.json`, `model.safetensors`, `generation_config.json`, `token_layout.json`,
`omniflatten.json` (the checkpoint's whole description: model config, lineage, stage, flatten
settings, context window, speech tokenizer hash, decoding policy) and, for a trained stage, the
speech tokenizer file itself (`speech_tokenizer.npz`: numpy arrays and a JSON config, README
"Hugging Face import and export"), so that a PyTorch user can turn audio into the model's
speech ids and back. The extended vocabulary is kept: speech codes and special tokens are
part of the model. Only the padding rows that no token uses are dropped, so the exported
vocabulary is the layout's `used_size`.

A checkpoint with NaN or infinite weights (a diverged run) is refused, naming the tensor. The
folder is written beside `--out` and renamed into place at the end (`checkpoint.staging`); a
non-empty `--out` is refused unless `--overwrite` says to replace it.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.flax import save_file

from omniflatten_jax import checkpoint
from omniflatten_jax.checkpoint.staging import check_destination, staged_folder
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.export import hf_config, weight_map

SPEECH_TOKENIZER_FILE = "speech_tokenizer.npz"
DESCRIPTION_FILE = "omniflatten.json"  # the checkpoint's metadata (`CheckpointMeta.to_json`)


def generation_config(layout: TokenLayout) -> dict:
    """Stop at the end of a text or speech span; pad with <pad>."""
    return {"eos_token_id": [layout.special("[EOT]"), layout.special("[EOS]")],
            "pad_token_id": layout.special("<pad>"), "do_sample": False}


def export_hf(checkpoint_path: str, out: str, dtype: str = "float32",
              overwrite: bool = False) -> str:
    """Writes the Hugging Face folder `out` from a checkpoint; returns `out`. The destination
    is checked before the weights are read (a refusal costs nothing), and the weights before
    anything is written (`checkpoint.load_params` refuses non-finite ones)."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, not {dtype!r}")
    check_destination(out, overwrite, checkpoint_path)
    params, meta, step_dir = checkpoint.load_params(checkpoint_path)
    tensors = hf_tensors(jax.tree.map(np.asarray, params), meta, dtype)
    with staged_folder(out, overwrite, checkpoint_path) as folder:
        _write_folder(folder, tensors, meta, step_dir, dtype)
    return out


def hf_tensors(params, meta: checkpoint.CheckpointMeta, dtype: str) -> dict:
    """Our parameter tree -> Hugging Face tensor names and layouts (padding rows dropped)."""
    tensors = {}
    for name, path, transform in weight_map.tensor_map(meta.model):
        array = weight_map.to_hf(weight_map.get_path(params, path), transform)
        if path[0] in ("embed", "lm_head"):
            array = array[:meta.layout.used_size]  # drop the padding rows
        tensors[name] = jnp.asarray(np.ascontiguousarray(array), dtype=dtype)
    return tensors


def _write_folder(out: str, tensors: dict, meta: checkpoint.CheckpointMeta, step_dir: str,
                  dtype: str) -> None:
    layout = meta.layout
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config.model_config_to_hf(meta.model, layout, dtype), f, indent=2)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump(generation_config(layout), f, indent=2)
    layout.save(out)
    with open(os.path.join(out, DESCRIPTION_FILE), "w") as f:
        json.dump({"checkpoint": step_dir, **meta.to_json()}, f, indent=2)
    if meta.speech_tokenizer_sha256 is not None:
        with open(os.path.join(out, SPEECH_TOKENIZER_FILE), "wb") as f:
            f.write(checkpoint.load_speech_tokenizer_bytes(step_dir))
