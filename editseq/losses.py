"""Masked token cross entropy of a batch, over the whole sequence at once or chunk by chunk.

With a 50k vocabulary the fp32 logits `[B, T, vocab]` dominate a small model's activation memory
(13 GB for 64 x 1024 tokens, as much again for their gradient), which caps the batch per device.
With `chunk_size`, the final hidden states are cut into chunks along the sequence whose logits are
computed, reduced to a loss sum and dropped one at a time under `jax.checkpoint`: the backward
recomputes one chunk's logits at a time instead of keeping them all. Peak logits memory falls by
`T / chunk_size`; the price is one more head matmul in the forward (not counted in MFU).
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from editseq import model as model_lib


def loss_sums(model: model_lib.Transformer, batch: Mapping[str, jax.Array], chunk_size: int = 0
              ) -> tuple[jax.Array, jax.Array]:
  """(sum of masked token cross entropies, number of loss tokens); `chunk_size` 0 = unchunked."""
  mask = batch["loss_mask"].astype(jnp.float32)
  inputs = dict(positions=batch["positions"], segment_ids=batch["segment_ids"])
  if not chunk_size:
    logits = model(batch["inputs"], **inputs)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    return jnp.sum(losses * mask), jnp.sum(mask)
  hidden = model(batch["inputs"], **inputs, return_hidden=True)
  b, t, _ = hidden.shape
  if t % chunk_size:
    raise ValueError(f"sequence length {t} is not a multiple of the loss chunk size {chunk_size}")
  # The stored (fp32) head: each chunk casts it, so its gradient accumulates over chunks in fp32.
  head = model.output_matrix()

  @jax.checkpoint
  def chunk_loss(total, chunk):
    h, targets, m = chunk
    losses = optax.softmax_cross_entropy_with_integer_labels(model.output_logits(h, head), targets)
    return total + jnp.sum(losses * m), None

  def chunks(x):  # [B, T, ...] -> [T / chunk_size, B, chunk_size, ...]
    return jnp.moveaxis(x.reshape(b, t // chunk_size, chunk_size, *x.shape[2:]), 1, 0)

  total, _ = jax.lax.scan(chunk_loss, jnp.zeros((), jnp.float32),
                          (chunks(hidden), chunks(batch["targets"]), chunks(mask)))
  return total, jnp.sum(mask)
