"""Masked token cross entropy of a batch, over the whole sequence at once or chunk by chunk.

With a 50k vocabulary the fp32 logits `[B, T, vocab]` dominate a small model's activation memory
(13 GB for 64 x 1024 tokens, as much again for their gradient), which caps the batch per device.
With `chunk_size`, the final hidden states are cut into chunks along the sequence (the last one
padded if it does not divide T), and the loss never holds more than one chunk's logits.

The chunked loss is a fused linear + cross-entropy with its own VJP: when it is differentiated,
its forward pass also computes each chunk's gradients (logits -> loss -> d hidden, d head) at
once and drops the logits; the backward only scales the stored gradients by the incoming
cotangent (a scalar: the loss is a sum). That is exactly the unchunked step's matmul work, three
head matmuls per token, with no recomputation, unlike rematerialising each chunk (four). Without
differentiation (eval) it computes the loss alone. A chunk's gradients take the form that suits
the platform (`jax.lax.platform_dependent`): autodiff's on CPU, derived by hand on GPU and TPU,
where they make fewer passes over the logits (docs/TPU_GPU.md; measured on an H100, the 150M
train step at batch 64 x 1024 takes 159 ms, 167 ms with the whole-sequence loss).
"""
from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from editseq import model as model_lib


def loss_sums(model: model_lib.Transformer, batch: Mapping[str, jax.Array], chunk_size: int = 0
              ) -> tuple[jax.Array, jax.Array]:
  """(sum of masked token cross entropies, number of loss tokens); `chunk_size` 0 = unchunked."""
  mask = batch["loss_mask"].astype(jnp.float32)
  hidden = model(batch["inputs"], positions=batch["positions"],
                 segment_ids=batch["segment_ids"], return_hidden=True)
  total = head_loss(hidden, model.output_matrix(), batch["targets"], mask,
                    model.cfg.final_logit_softcap, chunk_size)
  return total, jnp.sum(mask)


def head_loss(hidden: jax.Array, head: jax.Array, targets: jax.Array, mask: jax.Array,
              softcap: float = 0.0, chunk_size: int = 0) -> jax.Array:
  """Sum over positions of mask * cross_entropy(head_logits(hidden, head, softcap), targets):
  hidden [B, T, d] final-normed, head [d, vocab] as stored, targets and mask [B, T].
  `chunk_size` 0 makes all the logits at once; else `chunked_head_loss` (a partial last chunk is
  padded with positions outside the loss)."""
  if not chunk_size:
    return _token_loss_sum(hidden, head, targets, mask, softcap)
  t = hidden.shape[1]
  chunk_size = min(chunk_size, t)
  if pad := -t % chunk_size:
    hidden, targets, mask = (jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
                             for x in (hidden, targets, mask))
  return chunked_head_loss(hidden, head, targets, mask, softcap, chunk_size)


def _chunks(chunk_size: int, *xs: jax.Array) -> tuple[jax.Array, ...]:
  """Each [B, T, ...] -> [T / chunk_size, B, chunk_size, ...]: the scan runs over sequence chunks,
  so every chunk keeps the batch axis (and its sharding)."""
  return tuple(jnp.moveaxis(x.reshape(x.shape[0], x.shape[1] // chunk_size, chunk_size,
                                      *x.shape[2:]), 1, 0) for x in xs)


def _unchunk(x: jax.Array) -> jax.Array:
  """The inverse of `_chunks`."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _token_loss_sum(hidden, head, targets, mask, softcap):
  logits = model_lib.head_logits(hidden, head, softcap)
  return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * mask)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def chunked_head_loss(hidden: jax.Array, head: jax.Array, targets: jax.Array, mask: jax.Array,
                      softcap: float, chunk_size: int) -> jax.Array:
  """Sum over tokens of mask * cross_entropy(head_logits(hidden, head, softcap), targets), one
  chunk of `chunk_size` positions at a time. hidden [B, T, d], head [d, vocab] as stored,
  targets and mask [B, T]."""
  def body(total, chunk):
    h, y, m = chunk
    return total + _token_loss_sum(h, head, y, m, softcap), None

  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32),
                          _chunks(chunk_size, hidden, targets, mask))
  return total


def _chunk_loss_and_grads(h, head, y, m, softcap):
  """(loss sum, d h, d head) of one chunk, by the form that suits the platform it runs on.

  Accelerators are bound by memory traffic over the chunk's [B, c, vocab] logits, XLA:CPU by
  the exponentials: each gets the form that does least of what bounds it (see the two below).
  """
  return jax.lax.platform_dependent(
      h, head, y, m, cpu=functools.partial(_chunk_grads_by_autodiff, softcap=softcap),
      default=functools.partial(_chunk_grads_by_hand, softcap=softcap))


def _chunk_grads_by_autodiff(h, head, y, m, softcap):
  """Autodiff of the cross entropy: one exponential per logit, its result kept in memory and
  read again (on 2 CPU cores the head + loss step is 1.2x faster than recomputing them)."""
  loss, (d_h, d_head) = jax.value_and_grad(_token_loss_sum, argnums=(0, 1))(h, head, y, m,
                                                                            softcap)
  return loss, d_h, d_head


def _chunk_grads_by_hand(h, head, y, m, softcap):
  """The chunk's gradients derived by hand, for GPUs and TPUs.

  Autodiff writes the [B, c, vocab] tensors several times (log probabilities, their fp32
  cotangent, a scatter for the target's one-hot, then a cast), and on an H100 those passes over
  the logits cost more than the head matmuls. Here the logits are written once (by the matmul)
  and read twice: a one-pass logsumexp, then one elementwise pass that recomputes the
  exponentials and writes d logits = (softmax - one_hot) * mask in the compute dtype. The target logit is a masked sum, not a gather, so a vocabulary sharded over devices
  stays sharded (XLA:GPU computes it in that same last pass).
  """
  w = head.astype(h.dtype)
  logits = model_lib.head_logits(h, head)  # fp32, before the soft cap
  if softcap:
    capped = jnp.tanh(logits / softcap)
    logits = softcap * capped
  lse = _logsumexp_one_pass(logits)
  one_hot = jnp.arange(logits.shape[-1], dtype=y.dtype) == y[..., None]
  target_logit = jnp.sum(jnp.where(one_hot, logits, 0.0), axis=-1)
  loss = jnp.sum((lse - target_logit) * m)
  d_logits = (jnp.exp(logits - lse[..., None]) - one_hot) * m[..., None]
  if softcap:
    d_logits = d_logits * (1.0 - capped * capped)
  d_logits = d_logits.astype(h.dtype)
  d_h = jnp.einsum("btv,dv->btd", d_logits, w, preferred_element_type=jnp.float32)
  d_head = jnp.einsum("btd,btv->dv", h, d_logits, preferred_element_type=jnp.float32)
  return loss, d_h.astype(h.dtype), d_head


def _logsumexp_one_pass(x: jax.Array) -> jax.Array:
  """logsumexp over the last axis in one read of x: a variadic reduction of (max, sum of exp
  relative to that max) pairs, the online softmax's running state, where `jax.nn.logsumexp`
  reads x twice (its max first, then the sum)."""
  def combine(a, b):
    (m_a, s_a), (m_b, s_b) = a, b
    m = jnp.maximum(m_a, m_b)
    safe = jnp.where(jnp.isfinite(m), m, 0.0)  # both -inf: keep the sum 0, not nan
    return m, s_a * jnp.exp(m_a - safe) + s_b * jnp.exp(m_b - safe)

  m, s = jax.lax.reduce((x, jnp.ones_like(x)), (jnp.array(-jnp.inf, x.dtype),
                                                jnp.array(0.0, x.dtype)),
                        combine, (x.ndim - 1,))
  return m + jnp.log(s)


def _chunked_head_loss_fwd(hidden, head, targets, mask, softcap, chunk_size):
  def body(carry, chunk):
    total, d_head = carry
    h, y, m = chunk
    loss, d_h, d_head_chunk = _chunk_loss_and_grads(h, head, y, m, softcap)
    return (total + loss, d_head + d_head_chunk), d_h

  init = (jnp.zeros((), jnp.float32), jnp.zeros(head.shape, jnp.float32))
  (total, d_head), d_hidden = jax.lax.scan(body, init, _chunks(chunk_size, hidden, targets, mask))
  return total, (_unchunk(d_hidden), d_head)


def _chunked_head_loss_bwd(softcap, chunk_size, residuals, g):
  del softcap, chunk_size
  d_hidden, d_head = residuals
  # The head gradient is summed over chunks in fp32, then given the stored head's dtype.
  return ((d_hidden * g).astype(d_hidden.dtype), (d_head * g).astype(d_head.dtype), None, None)


chunked_head_loss.defvjp(_chunked_head_loss_fwd, _chunked_head_loss_bwd)
