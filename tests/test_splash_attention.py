"""Splash attention (editseq.splash_attention) against the model's XLA attention.

The TPU kernel runs here in Pallas's interpreter: the same kernel code, block masks and custom
gradients that Mosaic compiles on a TPU (test_aot compiles it for one). Checked alone, inside the
model (packed rows, GQA, Gemma 2's alternating windows and soft-cap, scanned and unrolled
layers) and sharded over the 8 simulated devices.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from editseq import attention
from editseq import sharding
from editseq import splash_attention

from tests import numerics
from tests.test_model import GEMMA_LIKE, TINY, make, tokens

T = 128
# Two rows: three packed examples then padding (id 0, positions restarting), and one example.
SEGMENT_IDS = jnp.asarray([[1] * 50 + [2] * 40 + [3] * 30 + [0] * 8, [1] * T])
POSITIONS = jnp.asarray([list(range(50)) + list(range(40)) + list(range(30)) + list(range(8)),
                         list(range(T))])


@pytest.fixture(autouse=True)
def exact_matmuls():
  with jax.default_matmul_precision("highest"):
    yield


def xla_reference(q, k, v, segment_ids, scale, window, softcap):
  """The model's XLA attention with the mask the model builds from positions and segments."""
  positions = POSITIONS if segment_ids is not None else jnp.broadcast_to(jnp.arange(T), (2, T))
  mask = attention.attention_mask(positions, positions, segment_ids, segment_ids)
  if window:
    mask &= positions[:, :, None] - positions[:, None, :] < window
  return attention._xla_attention(q, k, v, mask, scale, softcap)  # pylint: disable=protected-access


@pytest.mark.parametrize("window, softcap", [(0, 0.0), (33, 0.0), (0, 5.0)])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "one_per_row"])
def test_kernel_matches_xla_attention_and_its_gradients(window, softcap, packed):
  heads, kv_heads, head_dim = 4, 2, 16  # grouped-query
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (2, T, heads, head_dim))
  k, v = (jax.random.normal(key, (2, T, kv_heads, head_dim)) for key in keys[1:3])
  cotangent = jax.random.normal(keys[3], q.shape)
  segment_ids = SEGMENT_IDS if packed else None
  args = dict(scale=0.3, window=window, softcap=softcap)

  def run(attention):
    out, vjp = jax.vjp(lambda q, k, v: attention(q, k, v, segment_ids, **args), q, k, v)
    return out, vjp(cotangent)

  got = jax.jit(lambda: run(splash_attention.attention))()
  want = run(lambda *a, scale, window, softcap: xla_reference(*a, scale, window, softcap))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5), got, want)


def loss_and_grads(cfg, x, segment_ids, positions):
  model = make(cfg)

  def loss(model):
    logits = model(x, positions=positions, segment_ids=segment_ids)
    return jnp.sum(jax.nn.logsumexp(logits, -1) * (segment_ids > 0)), logits

  (_, logits), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
  return jnp.where((segment_ids > 0)[..., None], logits, 0), nnx.to_pure_dict(grads)


@pytest.mark.parametrize("cfg, scan_layers, remat", [
    (TINY, True, "none"), (TINY, False, "none"), (GEMMA_LIKE, True, "none"),
    (GEMMA_LIKE, False, "none"), (GEMMA_LIKE, True, "dots"),
], ids=["tinycodelm-scanned", "tinycodelm-unrolled", "gemma_like-scanned", "gemma_like-unrolled",
        "gemma_like-scanned-remat"])
def test_model_with_splash_attention_matches_xla_attention(cfg, scan_layers, remat):
  """GEMMA_LIKE: GQA, soft-cap, and a window on even layers only (a `lax.cond` between two
  kernels inside the scan). Under remat the kernel's residuals are saved by name."""
  xla = dataclasses.replace(cfg, attention_impl="xla", scan_layers=scan_layers, remat=remat)
  splash = dataclasses.replace(xla, attention_impl="splash")
  x = tokens((2, T))
  got = loss_and_grads(splash, x, SEGMENT_IDS, POSITIONS)
  want = loss_and_grads(xla, x, SEGMENT_IDS, POSITIONS)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), got, want)


def test_bfloat16_model_with_splash_attention_matches_xla_attention():
  """The training dtype: bf16 activations into the kernel, as on a TPU."""
  xla = dataclasses.replace(GEMMA_LIKE, dtype="bfloat16", attention_impl="xla", scan_layers=True)
  splash = dataclasses.replace(xla, attention_impl="splash")
  x = tokens((2, T))
  got_logits, got_grads = loss_and_grads(splash, x, SEGMENT_IDS, POSITIONS)
  want_logits, want_grads = loss_and_grads(xla, x, SEGMENT_IDS, POSITIONS)
  np.testing.assert_allclose(got_logits, want_logits, atol=0.05)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=0.05, rtol=0.05),
               got_grads, want_grads)


def test_lengths_the_kernel_cannot_tile_take_the_xla_path():
  splash = dataclasses.replace(TINY, attention_impl="splash", scan_layers=True)
  xla = dataclasses.replace(splash, attention_impl="xla")
  x, segment_ids = tokens((2, 100)), jnp.ones((2, 100), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(100), (2, 100))
  assert not splash_attention.supports_length(100)
  np.testing.assert_array_equal(loss_and_grads(splash, x, segment_ids, positions)[0],
                                loss_and_grads(xla, x, segment_ids, positions)[0])
  q = jnp.zeros((1, 100, 4, 8))
  with pytest.raises(ValueError, match="divisible by 128"):
    splash_attention.attention(q, q, q, None, scale=1.0)


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 4, 2), (8, 1, 1)])
def test_sharded_splash_attention_matches_one_device(shape):
  """Under a mesh the kernel runs in shard_map over the batch axes and, for heads, "tensor"."""
  cfg = dataclasses.replace(TINY, vocab_size=128, num_kv_heads=2, attention_impl="splash",
                            scan_layers=True)
  graphdef, state = nnx.split(make(cfg), nnx.Param)
  x = jnp.tile(tokens((2, T)), (4, 1))
  segment_ids, targets = jnp.tile(SEGMENT_IDS, (4, 1)), jnp.roll(x, -1, axis=1)
  positions = jnp.tile(POSITIONS, (4, 1))

  def loss_fn(state, batch):
    x, targets, segment_ids, positions = batch
    logits = nnx.merge(graphdef, state)(x, positions=positions, segment_ids=segment_ids)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(losses * (segment_ids > 0))

  batch = (x, targets, segment_ids, positions)
  step = jax.jit(jax.value_and_grad(loss_fn))
  want_loss, want_grads = step(state, batch)
  data, fsdp, tensor = shape
  mesh = sharding.make_mesh(dict(data=data, fsdp=fsdp, tensor=tensor))
  shardings = sharding.state_shardings(state, mesh)
  with jax.set_mesh(mesh):
    sharded = jax.jit(jax.value_and_grad(loss_fn), out_shardings=(None, shardings))
    lowered = sharded.lower(jax.device_put(state, shardings),
                            jax.device_put(batch, sharding.batch_sharding(mesh, 8)))
    loss, grads = lowered.compile()(jax.device_put(state, shardings),
                                    jax.device_put(batch, sharding.batch_sharding(mesh, 8)))
  assert "shard_map" in lowered.as_text() or "sdy.manual_computation" in lowered.as_text()
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  # Weight gradients sum over the batch's 8 x T tokens, in another order once sharded.
  numerics.assert_close_up_to_reordering(nnx.to_pure_dict(grads), nnx.to_pure_dict(want_grads),
                                         terms=8 * T)
