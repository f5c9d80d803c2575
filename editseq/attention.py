"""Attention for training and scoring, and its masks: three back ends behind `attend`.

XLA attention (einsums with an explicit mask, any option and device; its own backward,
`_attention_core`), cuDNN flash attention (NVIDIA GPUs; packed rows as `packed_layout`'s lengths
and offsets) and splash attention (TPUs; `editseq.splash_attention`, given the segment ids).
`sequence_masks` builds what each layer's `attend` takes for the configured back end (a
`KernelMask` for a kernel, an explicit [B, T, T] mask for XLA), and `cache_masks` the explicit
masks of decoding with a KV cache, which always runs XLA attention. Which back end a run uses is
`ModelConfig.attention_impl`, chosen for the device at start-up (`ModelConfig.for_device`).
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from editseq import sharding
from editseq import splash_attention

if TYPE_CHECKING:
  from editseq.model import ModelConfig

Array = jax.Array

# Large finite negative: fully masked rows (left padding) give a uniform softmax instead of NaN.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
# The window of a layer without one (`KernelMask.window`, `sequence_masks`).
NO_WINDOW = jnp.iinfo(jnp.int32).max


def apply_softcap(x: Array, cap: float) -> Array:
  """cap * tanh(x / cap): Gemma 2's soft cap on logits (cap 0: x unchanged)."""
  return cap * jnp.tanh(x / cap) if cap else x


class KernelMask(NamedTuple):
  """What a fused attention kernel is told in place of an explicit mask: causal by index within
  `segments` (cuDNN: `packed_layout`'s (lengths, offsets); splash: the segment ids [B, T]; None:
  one sequence per row), and this layer's sliding `window` (`NO_WINDOW`: none; traced when the
  layers are scanned)."""
  segments: Any
  window: Array | int


def attend(q: Array, k: Array, v: Array, mask, cfg: ModelConfig, *,
           kv_major: bool = False) -> Array:
  """Attention of roped q [B, T, H, Dh] over k, v [B, S, KV, Dh] (when `kv_major`, the cache's
  layout: k [B, KV, Dh, S], v [B, KV, S, Dh]) under a layer's `mask` (`sequence_masks`): the
  configured kernel for a `KernelMask`, else XLA attention. The output [B, T, H, Dh] is constrained to the heads'
  sharding."""
  scale = cfg.query_scale or cfg.head_dim ** -0.5
  if isinstance(mask, KernelMask):
    if cfg.attention_impl == "cudnn":
      return _sharded_like_q(_cudnn_attention(q, k, v, scale, cfg.sliding_window, mask.segments))
    return _sharded_like_q(_splash_attention(q, k, v, scale, cfg, mask))
  return _xla_attention(q, k, v, mask, scale, cfg.attn_logit_softcap, kv_major=kv_major)


def _sharded_like_q(out: Array) -> Array:
  return sharding.constrain(out, ("act_batch", "act_length", "act_heads", None))


def _xla_attention(q, k, v, mask, scale, softcap, *, kv_major=False):
  """Grouped-query attention with an explicit [B, T, S] mask; fp32 scores and softmax.

  q is [B, T, H, Dh]; k and v are [B, S, KV, Dh], or when `kv_major` (the cache) k [B, KV, Dh, S]
  and v [B, KV, S, Dh]: `kv_dims` "bksd" names that layout by v's axes.
  """
  kv_dims = "bksd" if kv_major else "bskd"
  return _attention_core(kv_dims, scale, softcap, q, k, v, mask)


def _grouped(x: Array, kv: int) -> Array:
  """[B, T, H, Dh] -> [B, T, KV, H / KV, Dh]: query heads grouped by the kv-head they share."""
  b, t, h, hd = x.shape
  return x.reshape(b, t, kv, h // kv, hd)


def _masked_scores(kv_dims, scale, softcap, q, k, mask):
  """fp32 scores [B, KV, G, T, S] of q [B, T, H, Dh], soft-capped and masked."""
  q = _grouped(q, k.shape[kv_dims.index("k")]) * jnp.asarray(scale, q.dtype)
  if kv_dims == "bksd":
    b, t, kv, g, hd = q.shape
    rows = q.transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, hd)
    # Keys stored transposed: a plain [q, Dh] @ [Dh, S] matmul per (B, KV). With keys as
    # [S, Dh], XLA:CPU ran this product 6-7x slower than the values' (64 rows, 256-1024
    # cached slots at the SmolLM2-135M shape: 3.7 vs 0.6 ms and 34 vs 4.6 ms per layer).
    scores = jnp.einsum("bkqd,bkds->bkqs", rows, k, preferred_element_type=jnp.float32)
    scores = scores.reshape(b, kv, g, t, -1)
  else:
    scores = jnp.einsum(f"btkgd,{kv_dims}->bkgts", q, k, preferred_element_type=jnp.float32)
  scores = apply_softcap(scores, softcap)
  return jnp.where(mask[:, None, None], scores, _MASK_VALUE)


def _weighted_values(kv_dims, probs, v):
  """probs [B, KV, G, T, S] @ v -> [B, T, KV, G, Dh].

  With the cache's kv-major layout (keys transposed, see `_masked_scores`) both products run as
  matmuls batched over (B, KV) alone, the query heads and positions of a kv-head as one dimension: XLA:CPU ran the five-dimensional
  einsums 2.3x slower (30 layers of 16 rows over 512 cached slots at the SmolLM2-135M shape:
  83 vs 35 ms), most of a decode step."""
  if kv_dims != "bksd":
    return jnp.einsum(f"bkgts,{kv_dims}->btkgd", probs, v)
  b, kv, g, t, s = probs.shape
  out = jnp.einsum("bkqs,bksd->bkqd", probs.reshape(b, kv, g * t, s), v)
  return out.reshape(b, kv, g, t, -1).transpose(0, 3, 1, 2, 4)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _attention_core(kv_dims: str, scale: float, softcap: float, q: Array, k: Array, v: Array,
                    mask: Array) -> Array:
  """softmax(`_masked_scores`) @ v [B, T, H, Dh], probabilities cast to v's dtype.

  The backward recomputes the probabilities from q, k and the softmax's row maxima and sums
  (FlashAttention's way) instead of keeping them: a [B, KV, G, T, S] array per layer was the
  largest thing a training step kept (docs/MEASUREMENTS.md), for one more q @ k matmul per
  layer. It also uses FlashAttention's identity sum_s dP[t, s] P[t, s] = dO[t] . O[t]
  (P @ v = O), a reduction over the head dimension instead of autodiff's over the keys of a
  [B, KV, G, T, S] product (which XLA:CPU ran as its slowest op). Same values as autodiff:
  the probabilities are computed as `jax.nn.softmax` computes them, in both passes.
  """
  return _attention_core_fwd(kv_dims, scale, softcap, q, k, v, mask)[0]


def _softmax_parts(scores):
  """(probabilities, row max, row sum) of fp32 scores, in `jax.nn.softmax`'s own steps."""
  row_max = jnp.max(scores, axis=-1, keepdims=True)
  unnormalized = jnp.exp(scores - row_max)
  row_sum = jnp.sum(unnormalized, axis=-1, keepdims=True)
  return unnormalized / row_sum, row_max, row_sum


def _attention_core_fwd(kv_dims, scale, softcap, q, k, v, mask):
  probs, row_max, row_sum = _softmax_parts(_masked_scores(kv_dims, scale, softcap, q, k, mask))
  # Constrained here, so that the output the backward keeps is the array the layer's output
  # projection keeps too (constrained after, it would be a second copy per layer).
  out = _sharded_like_q(
      _weighted_values(kv_dims, probs.astype(v.dtype), v).reshape(q.shape))
  return out, (q, k, v, mask, out, row_max, row_sum)


def _attention_core_bwd(kv_dims, scale, softcap, residuals, g):
  q, k, v, mask, out, row_max, row_sum = residuals
  f32 = jnp.float32
  scores, scores_vjp = jax.vjp(
      lambda q, k: _masked_scores(kv_dims, scale, softcap, q, k, mask), q, k)
  probs = (jnp.exp(scores - row_max) / row_sum).astype(v.dtype)
  kv = row_max.shape[1]
  g, out = _grouped(g, kv), _grouped(out, kv)
  d_probs = jnp.einsum(f"btkgd,{kv_dims}->bkgts", g, v, preferred_element_type=f32)
  delta = jnp.einsum("btkgd,btkgd->bkgt", g, out, preferred_element_type=f32)
  d_scores = probs.astype(f32) * (d_probs - delta[..., None])
  d_v = jnp.einsum(f"bkgts,btkgd->{kv_dims}", probs, g)
  d_q, d_k = scores_vjp(d_scores)
  return d_q, d_k, d_v.astype(v.dtype), None


_attention_core.defvjp(_attention_core_fwd, _attention_core_bwd)


def packed_layout(segment_ids: Array, max_segments: int) -> tuple[Array, Array]:
  """cuDNN's description of packed rows: (lengths [B, M], start offsets [B, M + 1]), -1 padded.

  Each run of equal segment ids (padding included) is one sequence; runs past the M-th are
  merged into the M-th.
  """
  b, t = segment_ids.shape
  is_start = jnp.concatenate(
      [jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  is_start &= jnp.cumsum(is_start, axis=1) <= max_segments
  index = jnp.arange(t, dtype=jnp.int32)
  starts = jnp.sort(jnp.where(is_start, index, t), axis=1)[:, :max_segments]
  ends = jnp.concatenate([starts[:, 1:], jnp.full((b, 1), t, jnp.int32)], axis=1)
  valid = starts < t
  lengths = jnp.where(valid, ends - starts, -1)
  offsets = jnp.concatenate([jnp.where(valid, starts, -1), jnp.full((b, 1), -1, jnp.int32)], 1)
  return lengths, offsets


def _cudnn_attention(q, k, v, scale, window, packing):
  """cuDNN flash attention, causal by index within each packed segment (positions must count
  0, 1, ... from each segment's start, as the input pipeline writes them)."""
  if packing is None:
    return jax.nn.dot_product_attention(
        q, k, v, scale=scale, is_causal=True, implementation="cudnn",
        local_window_size=(window - 1, 0) if window else None)
  # JAX exposes cuDNN's packed-sequence (ragged offsets) mode only through this module.
  from jax._src.cudnn import fused_attention_stablehlo as cudnn  # pylint: disable=import-outside-toplevel
  lengths, offsets = packing
  return cudnn.dot_product_attention(
      q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets, kv_offsets=offsets,
      scale=scale, mask_type=cudnn.MaskType.PADDING_CAUSAL, sliding_window_length=window or None)


def _splash_attention(q, k, v, scale, cfg, mask):
  """Splash attention with this layer's window: static when all layers share it; under a scan
  over Gemma 2's alternating layers, a `lax.cond` between the two kernels."""
  def run(window):
    return splash_attention.attention(q, k, v, mask.segments, scale=scale, window=window,
                                      softcap=cfg.attn_logit_softcap)

  windows = set(cfg.window_per_layer)
  if len(windows) == 1:
    return run(windows.pop())
  return jax.lax.cond(mask.window == NO_WINDOW, lambda: run(0),
                      lambda: run(cfg.sliding_window))


def sequence_masks(cfg: ModelConfig, positions: Array,
                   segment_ids: Array | None) -> Callable[[Any], Any]:
  """`layer_mask(window)` for a whole-sequence pass (training, scoring): what `attend` takes for
  a layer with that window (`NO_WINDOW`: none). The configured kernel gets a `KernelMask`
  (cuDNN: `packed_layout`; splash: the segment ids), XLA attention an explicit [B, T, T] mask."""
  t = positions.shape[1]
  if cfg.attention_impl == "cudnn":
    segments = (None if segment_ids is None else
                packed_layout(segment_ids, min(cfg.max_segments, t)))
    return lambda window: KernelMask(segments, window)
  if cfg.attention_impl == "splash" and splash_attention.supports_length(t):
    return lambda window: KernelMask(segment_ids, window)
  return _windowed(cfg, positions, positions,
                   attention_mask(positions, positions, segment_ids, segment_ids))


def cache_masks(cfg: ModelConfig, positions: Array, slot_pos: Array) -> Callable[[Any], Array]:
  """`layer_mask(window)` for decoding with a cache: queries at `positions` [B, T] over the
  cache's slots at `slot_pos` [B, S] (-1: empty), an explicit [B, T, S] mask (XLA attention)."""
  return _windowed(cfg, positions, slot_pos, attention_mask(positions, slot_pos))


def _windowed(cfg: ModelConfig, q_pos: Array, k_pos: Array,
              mask: Array) -> Callable[[Any], Array]:
  """`layer_mask(window)` over an explicit mask: keys within `window` positions of the query."""
  if not cfg.sliding_window:
    return lambda window: mask
  dist = q_pos[:, :, None] - k_pos[:, None, :]
  return lambda window: mask & (dist < window)


def attention_mask(q_pos: Array, k_pos: Array, q_seg: Array | None = None,
                   k_seg: Array | None = None) -> Array:
  """[B, Tq, Tk] bool: key valid (pos >= 0), not in the future, and in the query's segment."""
  mask = (k_pos[:, None, :] >= 0) & (k_pos[:, None, :] <= q_pos[:, :, None])
  if q_seg is not None:
    mask &= q_seg[:, :, None] == k_seg[:, None, :]
  return mask
