"""TPU flash attention for training and scoring: JAX's Pallas splash-attention kernel.

XLA attention materialises each layer's [B, H, T, T] fp32 scores and their probabilities for the
backward pass; splash attention streams blocks of keys through VMEM and saves only the output
and the log-sum-exp, and it skips key blocks that the causal or sliding-window mask rules out.
It computes everything the model's XLA attention does during training: causal attention within
packed segments (segment ids, no cap on examples per row, unlike cuDNN), grouped-query
attention, a sliding window, and logit soft-capping.

The kernel sees one example at a time ([heads, T, head_dim], vmapped over the batch) and cannot
be partitioned by XLA, so under a mesh it runs in `shard_map` over the batch and head axes that
the logical-axis rules give the activations. Pallas compiles it with Mosaic for TPUs; on any
other platform `lax.platform_dependent` runs the same kernel in Pallas's interpreter (slow: it
is how the tests check it on CPU, not a way to train there).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from editseq import sharding

# Kernel tile sizes along the sequence: the largest that divides it. Mosaic needs multiples of
# the TPU's 128 lanes, so other lengths take the XLA path (`supports_length`).
_BLOCKS = (512, 256, 128)
# The kernel's output and log-sum-exp, the residuals its backward reads, carry this name so that
# the model's "dots" remat policy saves them instead of running the forward kernel again.
RESIDUALS = "splash_attention_residuals"


def supports_length(seq_len: int) -> bool:
  """Whether the kernel can tile a sequence of `seq_len` tokens."""
  return seq_len % _BLOCKS[-1] == 0


def _kernel(num_heads: int, seq_len: int, window: int, softcap: float, interpret: bool):
  """The kernel for one example of `num_heads` query heads. Built at each trace: its block-mask
  arrays are constants of the trace; the numpy analysis behind them is cached by JAX."""
  shape = (seq_len, seq_len)
  mask = (splash.LocalMask(shape, window_size=(window - 1, 0), offset=0) if window else
          splash.CausalMask(shape))
  block = next(b for b in _BLOCKS if seq_len % b == 0)
  blocks = splash.BlockSizes(
      block_q=block, block_kv=block, block_kv_compute=block,
      block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
      block_q_dq=block, block_kv_dq=block)
  return splash.make_splash_mha(
      splash.MultiHeadMask([mask] * num_heads), block_sizes=blocks, head_shards=1,
      q_seq_shards=1, attn_logits_soft_cap=softcap or None, residual_checkpoint_name=RESIDUALS,
      interpret=interpret)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None, *,
              scale: float, window: int = 0, softcap: float = 0.0) -> jax.Array:
  """Causal attention within segments: q [B, T, H, Dh], k and v [B, T, KV, Dh] -> [B, T, H, Dh].

  `segment_ids` [B, T] (None: one sequence per row): a query sees the keys at or before it with
  its id, so positions must count 0, 1, ... from each segment's start (as packed rows do).
  `window` > 0: only the `window` latest keys (the key at the query's own index included).
  """
  if not supports_length(q.shape[1]):
    raise ValueError(f"splash attention needs a length divisible by {_BLOCKS[-1]}, "
                     f"got {q.shape[1]}")
  q = (q * jnp.asarray(scale, q.dtype)).transpose(0, 2, 1, 3)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

  def per_shard(q, k, v, segment_ids):
    def run(interpret):
      kernel = _kernel(q.shape[1], q.shape[2], window, softcap, interpret)
      if segment_ids is None:
        return jax.vmap(kernel)(q, k, v)
      return jax.vmap(lambda q, k, v, ids: kernel(q, k, v, segment_ids=splash.SegmentIds(ids, ids))
                      )(q, k, v, segment_ids)
    return jax.lax.platform_dependent(tpu=functools.partial(run, False),
                                      default=functools.partial(run, True))

  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    heads = sharding.logical_to_spec(("act_batch", "act_heads", None, None), mesh=mesh)
    kv_heads = sharding.logical_to_spec(("act_batch", "act_kv_heads", None, None), mesh=mesh)
    ids = sharding.logical_to_spec(("act_batch", None), mesh=mesh)
    # check_vma=False: the kernel's pallas_call does not declare how its outputs vary over the
    # mesh axes (they vary as the inputs do).
    per_shard = jax.shard_map(per_shard, mesh=mesh, in_specs=(heads, kv_heads, kv_heads, ids),
                              out_specs=heads, check_vma=False)
  return per_shard(q, k, v, segment_ids).transpose(0, 2, 1, 3)
