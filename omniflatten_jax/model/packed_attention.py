"""Causal self-attention over packed rows: segment ids go to a flash kernel, never a dense mask.

A packed row holds several sequences one after another; ``segment_ids [B, T]`` numbers them
(0 marks padding). A token attends causally to the tokens of its own segment only.

- ``splash``: TPU Pallas splash attention (`jax.experimental.pallas.ops.tpu`), segment ids and
  a causal block mask: blocks above the diagonal are skipped and memory is linear in T. Blocks
  masked only by segment ids (data, not known when compiling) are still computed, so a row
  costs about T^2 / 2 whatever its packing.
- ``pallas_gpu``: the Pallas GPU (Triton) flash attention, which takes segment ids.
- ``cudnn``: cuDNN through `jax.nn.dot_product_attention`; it has no segment ids, so packed
  rows reach it as a dense mask (its slow path). Kept for unpacked rows and for comparison.
- ``xla``: the reference, a dense ``[B, 1, T, T]`` mask; what CPU runs.

``auto`` picks by the platform the computation is compiled for (the active mesh's devices,
so a TPU plan compiled on a CPU host gets splash). The Pallas kernels run per shard under
`jax.shard_map` when a mesh is active, and in Pallas interpret mode on CPU (how tests check
them against the reference).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from omniflatten_jax.config import ATTENTION_IMPLS
from omniflatten_jax.distributed import sharding

KERNEL_BLOCK = 128  # rows are padded to a multiple of this for the Pallas kernels


def platform() -> str:
    """The platform being compiled for: the current mesh's devices."""
    return sharding.current()[0].devices.flat[0].platform


def resolve(impl: str, dtype, packed: bool, target: str | None = None) -> str:
    """The implementation `auto` stands for on `target` (default: `platform()`): splash on
    TPU; on GPU with a 16-bit dtype the Pallas kernel for packed rows and cuDNN's causal path
    for unpacked ones; XLA otherwise."""
    if impl != "auto":
        return impl
    target = target or platform()
    if target == "tpu":
        return "splash"
    if target == "gpu" and jnp.dtype(dtype).itemsize == 2:
        return "pallas_gpu" if packed else "cudnn"
    return "xla"


def packed_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None,
                     impl: str = "auto") -> jax.Array:
    """``q [B, T, H, D]``, ``k, v [B, T, KV, D]`` -> ``[B, T, H, D]``, causal within segments.

    Without `segment_ids` each row is one sequence. Outputs at padding positions (segment 0)
    are finite but implementation-defined: nothing reads them.
    """
    impl = resolve(impl, q.dtype, segment_ids is not None)
    if impl in ("xla", "cudnn"):
        return reference(q, k, v, segment_ids, implementation=impl)
    if impl not in ("splash", "pallas_gpu"):
        raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, not {impl!r}")
    if segment_ids is None:
        segment_ids = jnp.ones(q.shape[:2], jnp.int32)
    t = q.shape[1]
    pad = -t % KERNEL_BLOCK
    if pad:  # the tail joins the padding segment; its outputs are cut off below
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
        segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)))
    kernel = _splash if impl == "splash" else _pallas_gpu
    out = _per_shard(kernel, q, k, v, segment_ids.astype(jnp.int32))
    return out[:, :t]


def reference(q, k, v, segment_ids, implementation: str = "xla") -> jax.Array:
    """The dense-mask computation every kernel is tested against."""
    if segment_ids is None:
        mask = None
    else:
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        # Padding (segment 0) attends only to itself, so its rows never go empty.
        own = jnp.eye(q.shape[1], dtype=bool)[None]
        mask = ((same & (segment_ids[:, None, :] != 0)) | own)[:, None]  # [B, 1, T, T]
    # cuDNN takes the mask as a bias, which it trains on only for even lengths.
    if implementation == "cudnn" and mask is not None and q.shape[1] % 2:
        implementation = "xla"
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True,
                                        implementation=implementation)


def _per_shard(kernel, q, k, v, segment_ids):
    """Runs `kernel` on each device's block of rows and heads (`jax.shard_map`): a Pallas call
    is opaque to XLA's partitioner. Sequence and head_dim are whole on every device. Heads
    that do not divide the tensor axis are not split: each of its devices computes them all
    (correct, and redundant; the presets use no tensor parallelism)."""
    mesh, rules = sharding.current()

    def spec(names, shape):
        return sharding.logical_to_spec(names, shape, mesh, rules)

    q_spec = spec(("batch", None, "act_heads", None), q.shape)
    kv_spec = spec(("batch", None, "act_kv_heads", None), k.shape)
    if q_spec[2] != kv_spec[2]:
        # Query heads split where KV heads cannot be (e.g. 2 KV heads on 4 devices): give each
        # query head its own copy of its KV head so both split alike.
        group = q.shape[2] // k.shape[2]
        k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
        kv_spec = q_spec
    seg_spec = PartitionSpec(q_spec[0], None)
    interpret = mesh.devices.flat[0].platform == "cpu"
    return jax.shard_map(functools.partial(kernel, interpret=interpret), mesh=mesh,
                         in_specs=(q_spec, kv_spec, kv_spec, seg_spec), out_specs=q_spec,
                         check_vma=False)(q, k, v, segment_ids)


def _splash(q, k, v, segment_ids, interpret):
    """TPU splash attention on local blocks; GQA is native (KV heads divide query heads)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    _, t, h, d = q.shape
    attend = _splash_kernel(t, h, interpret)
    scale = jnp.asarray(d ** -0.5, q.dtype)

    def one_row(q, k, v, seg):  # [T, H, D] -> the kernel's [H, T, D]
        out = attend((q * scale).swapaxes(0, 1), k.swapaxes(0, 1), v.swapaxes(0, 1),
                     segment_ids=splash.SegmentIds(q=seg, kv=seg))
        return out.swapaxes(0, 1)

    return jax.vmap(one_row)(q, k, v, segment_ids)


def _splash_kernel(t: int, heads: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    block = _largest_block(t, 512)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                              block_q_dkv=block, block_kv_dkv=block,
                              block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    mask = splash.MultiHeadMask([splash.CausalMask((t, t)) for _ in range(heads)])
    # Made in each trace, not cached: its block-mask tables become that trace's constants.
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                  interpret=interpret)


def _pallas_gpu(q, k, v, segment_ids, interpret):
    """The Pallas GPU flash attention; it wants as many KV heads as query heads."""
    from jax.experimental.pallas.ops.gpu import attention

    group = q.shape[2] // k.shape[2]
    if group > 1:
        k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    block = _largest_block(q.shape[1], 128)
    sizes = attention.BlockSizes(block_q=block, block_k=block, block_q_dkv=32, block_kv_dkv=32,
                                 block_q_dq=32, block_kv_dq=32)
    return attention.mha(q, k, v, segment_ids, sm_scale=q.shape[-1] ** -0.5, causal=True,
                         block_sizes=sizes, interpret=interpret)


def _largest_block(t: int, most: int) -> int:
    return int(max(b for b in (128, 256, 512) if b <= most and t % b == 0))

