"""A one-minute end-to-end check of the library core: `python experiments/run.py --stage=smoke`.

It exercises every real part that exists: the configuration's model (the tiny preset of the
embedded default; ``--set=model.family=qwen3`` for the other family) on a device mesh, the token
layout and byte tokenizer, the ASR / TTS / duplex_3 layouts, a sharded jitted AdamW step, the KV
cache against the full forward pass, and an Orbax checkpoint that `export.to_hf` can convert.
Its "speech" is not audio: each text byte stands for three fixed speech codes, so that the
mapping is learnable and the loss must fall.
"""

from __future__ import annotations

import functools
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from omniflatten_jax import checkpoint
from omniflatten_jax.config import (
    FlattenConfig,
    MeshConfig,
    ModelConfig,
    OptimizerConfig,
    Preset,
    TokenLayout,
)
from omniflatten_jax.distributed import sharding
from omniflatten_jax.model import transformer
from omniflatten_jax.tokens.batches import padded_rows
from omniflatten_jax.tokens.chunk_layout import chunk_layout
from omniflatten_jax.tokens.dialogue_chunks import DialogueStreams, Turn, dialogue_chunks
from omniflatten_jax.tokens.sequence import FlatSequence, asr_sequence, tts_sequence
from omniflatten_jax.tokens.text_tokenizers import text_tokenizer
from omniflatten_jax.training.optimizer import make_optimizer
from omniflatten_jax.training.step import train_step

SENTENCES = ("hello there", "how are you", "i am fine", "good morning", "see you soon",
             "what time is it", "it is late", "thank you")
CACHE_TOL = 1e-4


def pseudo_speech(layout, text_ids: list[int]) -> np.ndarray:
    codes = np.array([(b * 3 + k) % layout.num_speech_codes for b in text_ids for k in range(3)])
    return layout.speech_ids(codes)


def examples(layout) -> list[FlatSequence]:
    tok = text_tokenizer(layout)
    seqs = []
    for text in SENTENCES:
        ids = tok.encode(text)
        seqs += [asr_sequence(layout, pseudo_speech(layout, ids), ids),
                 tts_sequence(layout, ids, pseudo_speech(layout, ids))]
    # One duplex_3 dialogue: the user asks, the assistant answers after a short gap.
    question, answer = tok.encode(SENTENCES[1]), tok.encode(SENTENCES[2])
    user, reply = pseudo_speech(layout, question), pseudo_speech(layout, answer)
    n = len(user) + 5 + len(reply)
    silent = layout.special("<silent_speech>")
    user_channel = np.concatenate([user, np.full(n - len(user), silent)])
    assistant_channel = np.concatenate([np.full(n - len(reply), silent), reply])
    dialogue = DialogueStreams(user_channel, assistant_channel, (
        Turn("user", 0, len(user), np.array(question)),
        Turn("assistant", n - len(reply), n, np.array(answer))))
    layout3 = chunk_layout("duplex_3", FlattenConfig(text_chunk=4))
    chunks = dialogue_chunks(dialogue, layout, FlattenConfig(text_chunk=4))
    n_chunks = chunks["user_speech"].shape[0]
    seqs.append(FlatSequence(layout3.flatten(chunks), layout3.stream_ids(n_chunks),
                             layout3.loss_mask(n_chunks)))
    return seqs


def run(workdir: str, steps: int, model_cfg: ModelConfig, layout: TokenLayout
        ) -> dict[str, float]:
    p = Preset(model_cfg, layout)
    model = transformer(p.model, p.layout.vocab_size)
    mesh_cfg = MeshConfig()
    mesh = sharding.make_mesh(mesh_cfg)
    seqs = examples(p.layout)
    length = -(-max(len(s) for s in seqs) // 64) * 64
    rows = padded_rows(seqs, length, p.layout.special("<pad>"))
    batch_size = -(-len(seqs) // mesh.size) * mesh.size  # a multiple of the device count
    rows = {k: np.resize(v, (batch_size,) + v.shape[1:]) for k, v in rows.items()}
    print(f"smoke: {p.model.family} model ({model.num_params:,} params) on mesh "
          f"{dict(mesh.shape)}; {len(seqs)} examples (ASR, TTS, duplex_3) in rows of {length} "
          "tokens")

    tx = make_optimizer(OptimizerConfig(peak_lr=3e-3, warmup_steps=5), steps)
    with sharding.activate(mesh, mesh_cfg.rules):
        p_shard = model.param_shardings(mesh, mesh_cfg.rules)
        params = model.init(jax.random.key(0), mesh, mesh_cfg.rules)
        opt_state = jax.jit(tx.init)(params)
        b_shard = {k: sharding.batch_sharding(mesh, mesh_cfg.rules, v.shape)
                   for k, v in rows.items()}
        batch = jax.device_put(rows, b_shard)
        o_shard = jax.tree.map(lambda x: x.sharding, opt_state)
        step = jax.jit(functools.partial(train_step, model, tx),
                       in_shardings=(p_shard, o_shard, b_shard),
                       out_shardings=(p_shard, o_shard, None), donate_argnums=(0, 1))
        losses, start = [], time.perf_counter()
        for i in range(1, steps + 1):
            params, opt_state, metrics = step(params, opt_state, batch)
            losses.append(float(metrics["loss"]))
            if i == 1 or i % 10 == 0 or i == steps:
                per = {k: float(s / max(c, 1)) for k, (s, c) in metrics["per_stream"].items()
                       if c > 0}
                rate = i * batch_size * length / (time.perf_counter() - start)
                print(f"step {i:4d}  loss {losses[-1]:.3f}  " +
                      "  ".join(f"{k} {v:.2f}" for k, v in per.items()) +
                      f"  {rate:,.0f} tokens/s")

    # The decode path must agree with the full forward pass on the trained weights.
    params = jax.device_get(params)
    seq = jnp.asarray(rows["tokens"][:2, :48])
    with sharding.on_one_device():
        full = model.logits(params, seq)
        cache = model.init_cache(2, 48)
        first, cache = model.extend(params, cache, seq[:, :40])
        rest, _ = model.extend(params, cache, seq[:, 40:])
    cache_diff = float(jnp.abs(jnp.concatenate([first, rest], 1) - full).max())
    print(f"KV cache vs full forward: max |diff| {cache_diff:.2e} (tolerance {CACHE_TOL})")
    if cache_diff > CACHE_TOL:
        raise SystemExit("KV cache disagrees with the full forward pass")
    if not losses[-1] < 0.5 * losses[0]:
        raise SystemExit(f"loss did not fall enough: {losses[0]:.3f} -> {losses[-1]:.3f}")

    ckpt_dir = os.path.join(os.path.abspath(workdir), "smoke", "checkpoints")
    meta = checkpoint.CheckpointMeta(p.model, p.layout, ({"kind": "smoke", "steps": steps},))
    if os.path.isdir(os.path.join(ckpt_dir, str(steps))):
        shutil.rmtree(os.path.join(ckpt_dir, str(steps)))  # a smoke run retrains; replace it
    step_dir = checkpoint.save_params(ckpt_dir, steps, params, meta)
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; checkpoint {step_dir}\n"
          f"export it: python experiments/to_hf.py --checkpoint {ckpt_dir} "
          f"--out {os.path.join(os.path.abspath(workdir), 'smoke', 'hf')}")
    return {"first_loss": losses[0], "last_loss": losses[-1], "cache_diff": cache_diff}
