"""AdamW with warmup + decay schedules, a weight-decay mask and global-norm clipping.

The defaults reproduce the reference finetuning recipe, which used the Hugging Face Trainer:
the schedules follow `transformers.get_{linear,cosine,constant}_schedule_with_warmup` step for
step (the learning rate of update `t`, counted from 0, is the schedule at `t`; with warmup the
first update therefore has learning rate 0), and weight decay is decoupled (AdamW).

Weight-decay mask: the Trainer decays every parameter except biases and LayerNorm weights.
Our models have no biases, so the rule is stated on shapes instead of names: a parameter is
decayed when it is a matrix or larger once the stacked `layers` axis is left out (projections
and embeddings), and not decayed when it is a vector (norm scales, biases). It needs each
parameter's logical axis names, which every parameter of `editseq.model` carries.
"""
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("cosine", "linear", "constant")
STACKED_AXIS = "layers"


def num_warmup_steps(opt_config: ml_collections.ConfigDict, total_steps: int) -> int:
  """`warmup_steps` when set (>= 0), else ceil(warmup_ratio * total_steps) as the Trainer does."""
  if opt_config.warmup_steps >= 0:
    return int(opt_config.warmup_steps)
  return int(math.ceil(opt_config.warmup_ratio * total_steps))


def learning_rate_schedule(opt_config: ml_collections.ConfigDict,
                           total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate`, then cosine/linear decay to 0 at `total_steps`."""
  peak = opt_config.learning_rate
  warmup = num_warmup_steps(opt_config, total_steps)
  kind = opt_config.schedule
  if kind not in SCHEDULES:
    raise ValueError(f"optimizer.schedule must be one of {SCHEDULES}, got {kind!r}")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = step / max(1, warmup)
    progress = (step - warmup) / max(1, total_steps - warmup)
    if kind == "linear":
      decay = jnp.maximum(0.0, 1.0 - progress)
    elif kind == "cosine":
      decay = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))
    else:
      decay = jnp.ones_like(step)
    return peak * jnp.where(step < warmup, warm, decay)

  return schedule


def is_decayed(logical_axes: Sequence[str | None]) -> bool:
  """True for matrices and larger (ignoring the stacked-layers axis), False for vectors."""
  return sum(1 for name in logical_axes if name != STACKED_AXIS) >= 2


def weight_decay_mask(logical_axes_tree: Any) -> Any:
  """Maps a pytree of per-parameter logical-axis tuples to a pytree of booleans."""
  return jax.tree.map(is_decayed, logical_axes_tree,
                      is_leaf=lambda x: isinstance(x, tuple))


def make_optimizer(opt_config: ml_collections.ConfigDict, total_steps: int,
                   decay_mask: Any) -> optax.GradientTransformation:
  """Global-norm clipping (when grad_clip_norm > 0) followed by masked AdamW."""
  adamw = optax.adamw(
      learning_rate=learning_rate_schedule(opt_config, total_steps),
      b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps,
      weight_decay=opt_config.weight_decay, mask=decay_mask)
  if opt_config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), adamw)
  return adamw
