"""editseq.losses: the chunked token loss equals the whole-sequence one, value and gradients."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from editseq import losses
from editseq import model as model_lib

TINY = model_lib.ModelConfig(vocab_size=97, num_layers=2, d_model=32, num_heads=4, mlp_dim=64,
                             dtype="float32")
# Untied head and a final-logit softcap: the two other ways logits are made.
SOFTCAPPED = dataclasses.replace(TINY, tie_embeddings=False, final_logit_softcap=3.0,
                                 num_kv_heads=2)


def packed_batch(batch=2, seq_len=24, seed=0):
  rng = np.random.default_rng(seed)
  segment_ids = np.repeat([[1] * 10 + [2] * 9 + [0] * 5], batch, axis=0)
  positions = np.concatenate([np.arange(10), np.arange(9), np.arange(5)])[None].repeat(batch, 0)
  return {
      "inputs": jnp.asarray(rng.integers(0, 97, (batch, seq_len)), jnp.int32),
      "targets": jnp.asarray(rng.integers(0, 97, (batch, seq_len)), jnp.int32),
      "positions": jnp.asarray(positions, jnp.int32),
      "segment_ids": jnp.asarray(segment_ids, jnp.int32),
      "loss_mask": jnp.asarray((segment_ids > 0) & (rng.uniform(size=segment_ids.shape) < 0.7)),
  }


def value_and_grads(cfg, batch, chunk_size):
  graphdef, params = nnx.split(model_lib.Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)

  @jax.jit
  def run(params):
    def objective(p):
      total, count = losses.loss_sums(nnx.merge(graphdef, p), batch, chunk_size)
      return total, count
    return jax.value_and_grad(objective, has_aux=True)(params)

  (total, count), grads = run(params)
  return total, count, grads


@pytest.mark.parametrize("cfg", [TINY, SOFTCAPPED], ids=["tied", "untied_softcap"])
@pytest.mark.parametrize("chunk_size", [6, 24, 7, 100])  # divisors; a partial last chunk; > T
def test_chunked_loss_equals_whole_sequence(cfg, chunk_size):
  batch = packed_batch()
  with jax.default_matmul_precision("highest"):
    total, count, grads = value_and_grads(cfg, batch, 0)
    chunked_total, chunked_count, chunked_grads = value_and_grads(cfg, batch, chunk_size)
  assert float(count) == float(jnp.sum(batch["loss_mask"])) == float(chunked_count)
  np.testing.assert_allclose(chunked_total, total, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(chunked_grads), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_chunked_loss_in_bfloat16_keeps_fp32_head_gradients():
  cfg = dataclasses.replace(TINY, dtype="bfloat16")
  batch = packed_batch()
  total, _, grads = value_and_grads(cfg, batch, 0)
  chunked_total, _, chunked_grads = value_and_grads(cfg, batch, 6)
  assert chunked_grads["embed"].dtype == jnp.float32
  np.testing.assert_allclose(chunked_total, total, rtol=1e-3)
  # bf16 matmuls round differently per chunk: compare the whole gradient, not each entry.
  a, b = np.asarray(chunked_grads["embed"]), np.asarray(grads["embed"])
  assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.02


def test_chunking_cuts_the_compiled_step_memory():
  """Compile-only: XLA's buffer assignment for the gradient of the loss, where a 50k vocabulary's
  logits dominate (4 x 512 tokens: 412 MB of fp32 logits). Chunks of 128 never hold them whole."""
  cfg = dataclasses.replace(TINY, vocab_size=50304, num_layers=1, d_model=64, mlp_dim=128)
  graphdef, params = nnx.split(model_lib.abstract_model(cfg), nnx.Param)
  batch = {k: jax.ShapeDtypeStruct((4, 512), jnp.int32)
           for k in ("inputs", "targets", "positions", "segment_ids", "loss_mask")}

  def temp_bytes(chunk_size):
    grad = jax.grad(lambda p, b: losses.loss_sums(nnx.merge(graphdef, p), b, chunk_size)[0])
    return jax.jit(grad).lower(params, batch).compile().memory_analysis().temp_size_in_bytes

  whole, chunked = temp_bytes(0), temp_bytes(128)
  assert whole > 4 * 512 * 50304 * 4  # the whole-sequence step holds all the logits
  assert chunked < whole / 2, (chunked, whole)


def _dot_flops(jaxpr) -> float:
  """2·(multiply-adds) of every dot_general in a jaxpr, sub-jaxprs included, scan bodies counted
  once per iteration (XLA's cost analysis counts a loop body once, whatever its trip count), a
  conditional by its costliest branch (one branch runs: `platform_dependent` is a cond)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "cond":
      total += max(_dot_flops(branch.jaxpr) for branch in eqn.params["branches"])
      continue
    if eqn.primitive.name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs_shape = eqn.invars[0].aval.shape
      total += 2 * np.prod(eqn.outvars[0].aval.shape) * np.prod(
          [lhs_shape[d] for d in contracting])
    trips = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, tuple) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += trips * _dot_flops(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += trips * _dot_flops(sub)
  return total


@pytest.mark.parametrize("cfg", [TINY, SOFTCAPPED], ids=["tied", "untied_softcap"])
def test_chunked_loss_does_the_unchunked_matmul_work(cfg):
  """The fused chunked loss computes each chunk's gradients in its forward pass: its gradient does
  the three head matmuls per token of the unchunked one, not a fourth to recompute the logits,
  and its value alone (eval) does one."""
  graphdef, params = nnx.split(model_lib.abstract_model(cfg), nnx.Param)
  batch = {k: jax.ShapeDtypeStruct((2, 24), jnp.int32)
           for k in ("inputs", "targets", "positions", "segment_ids", "loss_mask")}

  def work(chunk_size, grad):
    f = lambda p, b: losses.loss_sums(nnx.merge(graphdef, p), b, chunk_size)[0]
    return _dot_flops(jax.make_jaxpr(jax.grad(f) if grad else f)(params, batch).jaxpr)

  head_matmul = 2 * 2 * 24 * cfg.d_model * cfg.vocab_size
  for grad in (False, True):
    whole = work(0, grad)
    assert whole > (3 if grad else 1) * head_matmul
    for chunk_size in (6, 24):  # divisors of T (a partial chunk pads, and does more work)
      assert work(chunk_size, grad) == whole, (chunk_size, grad)


def test_chunked_loss_value_without_gradient():
  """Eval calls the loss without differentiating it: the loss-only path gives the same value."""
  batch = packed_batch()
  for cfg in (TINY, SOFTCAPPED):
    model = model_lib.Transformer(cfg, rngs=nnx.Rngs(0))
    with jax.default_matmul_precision("highest"):
      whole = jax.jit(lambda b: losses.loss_sums(model, b, 0))(batch)
      chunked = jax.jit(lambda b: losses.loss_sums(model, b, 6))(batch)
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-6)
    assert float(chunked[1]) == float(whole[1])


@pytest.mark.parametrize("softcap", [0.0, 3.0])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gradients_by_hand_equal_autodiff(softcap, dtype):
  """The accelerators' chunk gradients (derived by hand) equal autodiff's, which CPU runs and the
  tests above check against the whole-sequence loss."""
  rng = np.random.default_rng(1)
  h = jnp.asarray(rng.standard_normal((3, 16, 24)) * 2, dtype)
  head = jnp.asarray(rng.standard_normal((24, 97)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 97, (3, 16)), jnp.int32)
  m = jnp.asarray(rng.uniform(size=(3, 16)) < 0.7, jnp.float32)
  with jax.default_matmul_precision("highest"):
    by_hand = jax.jit(losses._chunk_grads_by_hand, static_argnums=4)(h, head, y, m, softcap)
    by_autodiff = jax.jit(losses._chunk_grads_by_autodiff, static_argnums=4)(h, head, y, m,
                                                                            softcap)
  assert [x.dtype for x in by_hand] == [x.dtype for x in by_autodiff]
  tol = 1e-6 if dtype == "float32" else 1e-2  # bf16: d logits round to bf16 in both
  for a, b in zip(by_hand, by_autodiff):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.linalg.norm(a - b) <= tol * np.linalg.norm(b), (a, b)


def test_each_platform_gets_its_chunk_gradients():
  """Lowered for CPU the chunk gradients are autodiff's (a gather of the target logit and a
  scatter for its one-hot); for GPU or TPU, the hand-derived ones (neither: masked sums, and a
  one-pass logsumexp). `jax.export` lowers for a platform this machine lacks."""
  args = (jax.ShapeDtypeStruct((2, 8, 16), jnp.bfloat16), jax.ShapeDtypeStruct((16, 64), jnp.float32),
          jax.ShapeDtypeStruct((2, 8), jnp.int32), jax.ShapeDtypeStruct((2, 8), jnp.float32))
  grad = jax.jit(jax.grad(lambda h, w, y, m: losses.head_loss(h, w, y, m, 0.0, 4), argnums=(0, 1)))
  for platform, by_hand in (("cpu", False), ("cuda", True), ("tpu", True)):
    text = jax.export.export(grad, platforms=[platform])(*args).mlir_module()
    assert ("scatter" not in text and "gather" not in text) == by_hand, platform


def test_one_pass_logsumexp_equals_jax():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((3, 5, 1000)) * 30, jnp.float32)
  x = x.at[0, 0].set(-jnp.inf).at[0, 1, :3].set(-jnp.inf).at[1, 2, 7].set(500.0)
  got = jax.jit(losses._logsumexp_one_pass)(x)
  np.testing.assert_allclose(got, jax.nn.logsumexp(x, axis=-1), rtol=1e-6)
  assert got[0, 0] == -jnp.inf
