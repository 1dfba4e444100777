"""Hugging Face folder of a known family (Qwen2, Qwen3: `model.families`) -> Orbax checkpoint
with the extended token layout.

    python experiments/from_hf.py --hf_dir Qwen2-0.5B/ --out ckpt/qwen2_0_5b

The text rows keep their ids. The rows the layout adds (speech codes, special tokens, padding)
are initialised by one rule, `extend_rows`: the mean of the checkpoint's rows plus Gaussian
noise of 1/10 of their per-dimension standard deviation (seeded). New tokens start as an
"average token" (the output distribution over text barely moves; Hewitt 2021), yet differ from
one another so that training can tell them apart. For an untied model the same rule is applied
to the output layer's rows.

A folder that we exported ourselves carries `token_layout.json`; its layout is used as is, and
its stage description (`omniflatten.json`) and speech tokenizer come back with it.

Weights holding NaN or infinite values are refused (nothing is written). The checkpoint is
written beside `--out` and renamed into place at the end (`checkpoint.staging`); a non-empty
`--out` is refused, before anything is read, unless `--overwrite` says to replace it.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from omniflatten_jax import checkpoint
from omniflatten_jax.checkpoint.staging import check_destination, staged_folder
from omniflatten_jax.config.token_layout import LAYOUT_FILENAME, LayoutMismatchError, TokenLayout
from omniflatten_jax.distributed import paths
from omniflatten_jax.export import hf_config, weight_map
from omniflatten_jax.export.to_hf import DESCRIPTION_FILE, SPEECH_TOKENIZER_FILE
from omniflatten_jax.finite import check_finite
from omniflatten_jax.model import transformer

NEW_ROWS_RULE = "mean of the checkpoint rows + N(0, (0.1 * per-dim std)^2), seeded"
IGNORED = ("rotary_emb.inv_freq",)  # buffers some old checkpoints carry


def extend_rows(rows: np.ndarray, total: int, seed: int) -> np.ndarray:
    """`rows [n, E]` -> `[total, E]`: new rows are the mean plus small noise (module doc)."""
    n = rows.shape[0]
    if total < n:
        raise ValueError(f"cannot shrink {n} rows to {total}")
    rng = np.random.default_rng(seed)
    mean, std = rows.mean(axis=0), rows.std(axis=0)
    new = mean + 0.1 * std * rng.standard_normal((total - n, rows.shape[1]))
    return np.concatenate([rows, new.astype(rows.dtype)])


def read_safetensors(hf_dir: str) -> dict[str, np.ndarray]:
    """All tensors of a (possibly sharded) safetensors checkpoint, as float32 numpy arrays."""
    files = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
    if not files:
        raise FileNotFoundError(
            f"{hf_dir} holds no *.safetensors files (PyTorch .bin checkpoints: re-save them "
            "with save_pretrained(safe_serialization=True))")
    from safetensors import SafetensorError

    tensors = {}
    for path in files:
        try:
            with safe_open(path, framework="flax") as f:
                for name in f.keys():
                    tensors[name] = np.asarray(f.get_tensor(name).astype(jnp.float32))
        except SafetensorError as e:
            raise ValueError(f"{path} is not a whole safetensors file ({e}): it was cut short "
                             "or damaged in the download; fetch it again") from None
    return tensors


def import_hf(hf_dir: str, out: str, num_speech_codes: int | None = None,
              text_tokenizer: str | None = None, seed: int = 0,
              overwrite: bool = False) -> str:
    """Converts `hf_dir` and writes step 0 of a checkpoint in `out`; returns the step folder.
    `out` is checked before anything is read, the converted weights before anything is
    written."""
    check_destination(out, overwrite, hf_dir)
    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path} not found: --hf_dir must be a local Hugging "
                                "Face model folder (config.json + *.safetensors)")
    with open(config_path) as f:
        hf = json.load(f)
    cfg = hf_config.model_config_from_hf(hf, config_path)
    hf_vocab = hf["vocab_size"]

    if os.path.isfile(os.path.join(hf_dir, LAYOUT_FILENAME)):
        layout = TokenLayout.load(hf_dir)  # our own export: its ids are already laid out
        if num_speech_codes not in (None, layout.num_speech_codes):
            raise LayoutMismatchError(
                f"{hf_dir} was exported with {layout.num_speech_codes} speech codes "
                f"({LAYOUT_FILENAME}); --num_speech_codes={num_speech_codes} would change ids")
        if hf_vocab != layout.used_size:
            raise ValueError(f"{hf_dir}: vocab_size {hf_vocab} != {layout.used_size} ids of its "
                             f"{LAYOUT_FILENAME}")
    else:
        if text_tokenizer is None:
            text_tokenizer = "qwen2" if hf_vocab >= 151_646 else None
        if text_tokenizer is None:
            raise ValueError(f"{hf_dir}: vocab_size {hf_vocab} is smaller than Qwen2's tokenizer;"
                             " pass --text_tokenizer (e.g. bytes) to say which ids the rows hold")
        layout = TokenLayout(text_tokenizer, hf_vocab, num_speech_codes or 4096)

    tensors = read_safetensors(hf_dir)
    model = transformer(cfg, layout.vocab_size)
    params: dict = {}
    for name, path, transform in weight_map.tensor_map(cfg):
        if name not in tensors:
            raise ValueError(f"{hf_dir}: tensor {name} is missing")
        array = tensors.pop(name)
        if path[0] in ("embed", "lm_head"):
            array = extend_rows(array, layout.vocab_size, seed)
        shape = weight_map.get_path(model.abstract_params, path).shape
        weight_map.set_path(params, path, weight_map.to_ours(array, shape, transform))
    if cfg.tie_embeddings and "lm_head.weight" in tensors:
        tensors.pop("lm_head.weight")  # tied: some writers store the shared matrix twice
    leftover = [n for n in tensors if not n.endswith(IGNORED)]
    if leftover:
        raise ValueError(f"{hf_dir}: tensors this {cfg.family} config has no place for: "
                         f"{leftover[:8]}")
    checkpoint.check_complete(params, model.abstract_params, hf_dir)
    check_finite(params, f"{hf_dir} (Hugging Face weights)",
                 "Import a model with finite weights: re-download it, or re-save it from the "
                 "last good training step.")

    meta = checkpoint.CheckpointMeta(cfg, layout, ({
        "kind": "hf_import", "path": os.path.abspath(hf_dir), "hf_vocab_size": hf_vocab,
        "new_rows": NEW_ROWS_RULE, "seed": seed},))
    meta, speech_tokenizer = _our_description(hf_dir, meta)
    with staged_folder(out, overwrite, hf_dir) as folder:
        checkpoint.save_params(folder, 0, params, meta, speech_tokenizer)
    return paths.join(out, "0")


def _our_description(hf_dir: str, meta: checkpoint.CheckpointMeta
                     ) -> tuple[checkpoint.CheckpointMeta, bytes | None]:
    """An export of ours keeps its stage description and speech tokenizer on re-import, so a
    model fine-tuned in PyTorch comes back ready for the duplex command."""
    described = os.path.join(hf_dir, DESCRIPTION_FILE)
    if not os.path.isfile(described):
        return meta, None
    with open(described) as f:
        ours = checkpoint.CheckpointMeta.from_json(json.load(f))
    data = None
    if ours.speech_tokenizer_sha256 is not None:
        path = os.path.join(hf_dir, SPEECH_TOKENIZER_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{described} names a speech tokenizer but {path} is missing")
        with open(path, "rb") as f:
            data = f.read()
        if checkpoint.sha256(data) != ours.speech_tokenizer_sha256:
            raise ValueError(f"{path} does not match the hash {described} records")
    return dataclasses.replace(meta, lineage=ours.lineage + meta.lineage, stage=ours.stage,
                               flatten=ours.flatten, context_chunks=ours.context_chunks,
                               speech_tokenizer_sha256=ours.speech_tokenizer_sha256,
                               decoding=ours.decoding), data
