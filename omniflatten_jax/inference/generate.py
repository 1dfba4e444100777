"""Batched greedy generation from prompts of different lengths, restricted to legal ids.

Prompts are left-padded to a common length (padding is masked out of attention and RoPE
positions), prefilled into a preallocated KV cache, then decoded one token per step inside
one jitted loop. Only `legal` ids can be produced (for example text ids and [EOT] when
transcribing); a row stops at its first stop id.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from omniflatten_jax.model import Params, Transformer

BUCKET = 16  # prompt lengths are rounded up to this, to bound the number of compilations


@functools.partial(jax.jit, static_argnames=("model", "max_new"))
def _greedy(model: Transformer, params: Params, tokens, valid, legal, stop, *, max_new: int):
    b, p = tokens.shape
    cache = model.init_cache(b, p + max_new)
    logits, cache = model.extend(params, cache, tokens, valid)
    penalty = jnp.where(legal, 0.0, -jnp.inf)

    def body(i, carry):
        cache, last_logits, out, done = carry
        token = jnp.argmax(last_logits + penalty, axis=-1).astype(jnp.int32)
        token = jnp.where(done, stop[0], token)
        out = out.at[:, i].set(token)
        done = done | jnp.isin(token, stop)
        logits, cache = model.extend(params, cache, token[:, None])
        return cache, logits[:, -1], out, done

    out = jnp.zeros((b, max_new), jnp.int32)
    done = jnp.zeros((b,), bool)
    _, _, out, _ = jax.lax.fori_loop(0, max_new, body, (cache, logits[:, -1], out, done))
    return out


def greedy_generate(model: Transformer, params: Params, prompts: Sequence[np.ndarray], *,
                    legal: np.ndarray, stop_ids: Sequence[int], max_new: int, pad_id: int,
                    batch_size: int = 16) -> list[np.ndarray]:
    """Generated ids per prompt, up to and excluding the first stop id."""
    if not len(stop_ids):
        raise ValueError("give at least one stop id")
    legal = jnp.asarray(legal, bool).at[jnp.asarray(stop_ids)].set(True)
    stop = jnp.asarray(stop_ids, jnp.int32)
    results: list[np.ndarray] = []
    for lo in range(0, len(prompts), batch_size):
        group = list(prompts[lo:lo + batch_size])
        n = len(group)
        group += [group[-1]] * (batch_size - n)  # fixed batch shape: one compilation
        width = -(-max(len(p) for p in group) // BUCKET) * BUCKET
        tokens = np.full((batch_size, width), pad_id, np.int32)
        valid = np.zeros((batch_size, width), bool)
        for i, prompt in enumerate(group):
            tokens[i, width - len(prompt):] = prompt
            valid[i, width - len(prompt):] = True
        out = np.asarray(_greedy(model, params, tokens, valid, legal, stop, max_new=max_new))
        for row in out[:n]:
            hits = np.flatnonzero(np.isin(row, stop_ids))
            results.append(row[:hits[0]] if len(hits) else row)
    return results
