"""Properties of editseq.model.Transformer: causality, packing, KV-cache decoding, options, errors."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from editseq import attention
from editseq import model as model_lib

TINY = model_lib.ModelConfig(vocab_size=97, num_layers=2, d_model=32, num_heads=4, mlp_dim=64,
                             dtype="float32")
# Every option at once: GQA, Gemma 2 style sliding window on even layers, softcaps, post-norms,
# scaled RMSNorm, GeGLU, embedding scaling, untied head, head_dim != d_model / heads.
GEMMA_LIKE = dataclasses.replace(
    TINY, num_layers=3, num_kv_heads=2, head_dim=12, sliding_window=4, sliding_window_layers="even",
    attn_logit_softcap=5.0, final_logit_softcap=3.0, post_norms=True, norm="rmsnorm",
    norm_scale=True, mlp_activation="gelu", embed_scale=True, tie_embeddings=False,
    query_scale=0.2)
CONFIGS = pytest.mark.parametrize("cfg", [TINY, GEMMA_LIKE], ids=["tinycodelm", "gemma_like"])


@pytest.fixture(autouse=True)
def exact_matmuls():
  """fp32 tolerances hold on GPUs too (XLA would use TF32 there by default)."""
  with jax.default_matmul_precision("highest"):
    yield


def make(cfg, seed=0):
  return model_lib.Transformer(cfg, rngs=nnx.Rngs(seed))


@nnx.jit
def run(model, x, positions=None, segment_ids=None, cache=None):
  """The model's forward, compiled once per shape (eager scans would retrace on every call)."""
  return model(x, positions=positions, segment_ids=segment_ids, cache=cache)


def tokens(shape, seed=1, vocab=97):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab, dtype=jnp.int32)


def arange_positions(batch, start, stop):
  return jnp.broadcast_to(jnp.arange(start, stop, dtype=jnp.int32), (batch, stop - start))


@CONFIGS
def test_future_tokens_do_not_change_past_logits(cfg):
  model = make(cfg)
  x = tokens((2, 10))
  y = x.at[:, 6:].set((x[:, 6:] + 1) % cfg.vocab_size)
  a, b = run(model, x), run(model, y)
  np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6)
  assert not np.allclose(a[:, 6:], b[:, 6:])


@CONFIGS
def test_packed_segments_equal_separate_runs(cfg):
  model = make(cfg)
  lengths = (5, 7, 3)
  parts = [tokens((1, n), seed=10 + i) for i, n in enumerate(lengths)]
  packed = jnp.concatenate(parts + [jnp.zeros((1, 2), jnp.int32)], axis=1)
  segment_ids = jnp.asarray([sum(([i + 1] * n for i, n in enumerate(lengths)), []) + [0, 0]])
  positions = jnp.asarray([sum((list(range(n)) for n in lengths), []) + [0, 1]])
  logits = run(model, packed, positions=positions, segment_ids=segment_ids)
  start = 0
  for part, n in zip(parts, lengths):
    np.testing.assert_allclose(logits[:, start:start + n], run(model, part), atol=1e-5)
    start += n


@CONFIGS
def test_kv_cache_decoding_matches_full_forward(cfg):
  model = make(cfg)
  x = tokens((3, 11))
  full = run(model, x)
  # Prefill 6 tokens, then one token at a time.
  cache = model.init_cache(3, 16, jnp.float32)
  logits, cache = run(model, x[:, :6], positions=arange_positions(3, 0, 6), cache=cache)
  steps = [logits]
  for i in range(6, 11):
    logits, cache = run(model, x[:, i:i + 1], positions=arange_positions(3, i, i + 1), cache=cache)
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)
  assert int(cache["index"]) == 11
  np.testing.assert_array_equal(cache["slot_pos"][:, :11], arange_positions(3, 0, 11))
  assert (cache["slot_pos"][:, 11:] == -1).all()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_per_row_cache_writes_land_at_each_rows_index(dtype):
  """The sampler's write (`[B]` index, one slot per row) puts each row's entries at its own
  slot and nowhere else; in bf16 the buffer is written in place, never converted whole
  (XLA:CPU converted a bf16 cache to f32 and back for every write)."""
  rng = np.random.default_rng(0)
  buffer = jnp.asarray(rng.standard_normal((4, 3, 10, 8)), dtype)
  new = jnp.asarray(rng.standard_normal((4, 3, 1, 8)), dtype)
  index = jnp.asarray([0, 9, 4, 4], jnp.int32)
  got = np.asarray(model_lib.cache_write(buffer, new, index, 2).astype(jnp.float32))
  want = np.asarray(buffer.astype(jnp.float32)).copy()
  for row, slot in enumerate(index.tolist()):
    want[row, :, slot] = np.asarray(new[row, :, 0].astype(jnp.float32))
  np.testing.assert_array_equal(got, want)
  if dtype == "bfloat16":
    hlo = jax.jit(model_lib.cache_write, static_argnums=3).lower(
        buffer, new, index, 2).compile().as_text()
    assert "f32[4,3,10,8]" not in hlo


@CONFIGS
def test_unstacked_layers_compute_the_same_function(cfg):
  model = make(cfg)
  unstacked = model_lib.unstack_layers(model)
  assert isinstance(unstacked.layers, nnx.List) and len(unstacked.layers) == cfg.num_layers
  assert model_lib.count_params(unstacked) == model_lib.count_params(model)
  # Each layer owns its arrays, named without the stacked "layers" axis (so they shard alike).
  q = unstacked.layers[1].attn.q
  assert q.shape == model.layers.attn.q.shape[1:]
  assert q.get_metadata()["out_sharding"] == ("embed", "heads", "head_dim")
  x = tokens((2, 9))
  np.testing.assert_allclose(run(unstacked, x), run(model, x), atol=1e-6)
  # KV-cache decoding with the unstacked layers (the sampler's path) matches too.
  cache = unstacked.init_cache(2, 12, jnp.float32)
  logits, cache = run(unstacked, x[:, :5], positions=arange_positions(2, 0, 5), cache=cache)
  steps = [logits]
  for i in range(5, 9):
    logits, cache = run(unstacked, x[:, i:i + 1], positions=arange_positions(2, i, i + 1),
                        cache=cache)
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), run(model, x), atol=1e-5)
  assert model_lib.unstack_layers(unstacked) is unstacked


def test_decoding_copy_stores_matrices_in_the_compute_dtype_with_identical_outputs():
  model = make(dataclasses.replace(GEMMA_LIKE, dtype="bfloat16"))
  decoding = model_lib.for_decoding(model)
  dtypes = {v.ndim: v.dtype for v in jax.tree.leaves(nnx.state(decoding, nnx.Param))}
  assert dtypes == {1: jnp.float32, 2: jnp.bfloat16, 3: jnp.bfloat16}
  unstacked = model_lib.unstack_layers(model)  # same layer loop, fp32 matrices cast at use
  x = tokens((2, 9))
  np.testing.assert_array_equal(run(decoding, x), run(unstacked, x))
  cache = model.init_cache(2, 12)
  positions = arange_positions(2, 0, 9)
  np.testing.assert_array_equal(run(decoding, x, positions=positions, cache=cache)[0],
                                run(unstacked, x, positions=positions, cache=cache)[0])


@CONFIGS
def test_left_padding_is_never_attended(cfg):
  model = make(cfg)
  short, long = tokens((1, 4), seed=3), tokens((1, 7), seed=4)
  pad = 3
  batch = jnp.concatenate([jnp.concatenate([jnp.full((1, pad), 5), short], 1), long], 0)
  positions = jnp.asarray([[-1] * pad + list(range(4)), list(range(7))], jnp.int32)
  cache = model.init_cache(2, 10, jnp.float32)
  logits, cache = run(model, batch, positions=positions, cache=cache)
  np.testing.assert_allclose(logits[0, pad:], run(model, short)[0], atol=1e-5)
  np.testing.assert_allclose(logits[1], run(model, long)[0], atol=1e-5)
  # The next decoded token continues each row at its own position.
  nxt = tokens((2, 1), seed=5)
  step, _ = run(model, nxt, positions=jnp.asarray([[4], [7]], jnp.int32), cache=cache)
  np.testing.assert_allclose(step[0, 0], run(model, jnp.concatenate([short, nxt[:1]], 1))[0, -1],
                             atol=1e-5)
  np.testing.assert_allclose(step[1, 0], run(model, jnp.concatenate([long, nxt[1:]], 1))[0, -1],
                             atol=1e-5)


def test_sliding_window_limits_the_receptive_field():
  # One layer, window 3: the logit at position p only depends on tokens p-2..p.
  cfg = dataclasses.replace(TINY, num_layers=1, sliding_window=3)
  model = make(cfg)
  x = tokens((1, 9))
  y = x.at[:, 2].set((x[:, 2] + 1) % cfg.vocab_size)
  a, b = run(model, x), run(model, y)
  np.testing.assert_allclose(a[:, 5:], b[:, 5:], atol=1e-6)
  assert not np.allclose(a[:, 2:5], b[:, 2:5])


def test_remat_gives_the_same_gradients():
  x = tokens((2, 8))

  def grads(cfg):
    model = make(cfg)

    def loss(model):
      return jnp.mean(jax.nn.logsumexp(model(x), axis=-1))

    return nnx.jit(nnx.grad(loss))(model)

  reference = grads(TINY)
  for policy in ("full", "dots_no_batch"):
    got = grads(dataclasses.replace(TINY, remat=policy))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 nnx.to_pure_dict(reference), nnx.to_pure_dict(got))


def test_unrolled_layers_match_scan():
  x = tokens((2, 8))
  want = run(make(dataclasses.replace(GEMMA_LIKE, scan_layers=True)), x)
  np.testing.assert_allclose(run(make(dataclasses.replace(GEMMA_LIKE, scan_layers=False)), x),
                             want, atol=1e-6)


def test_bfloat16_compute_keeps_fp32_params_and_logits():
  model = make(dataclasses.replace(TINY, dtype="bfloat16"))
  logits = run(model, tokens((2, 8)))
  assert logits.dtype == jnp.float32
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
  np.testing.assert_allclose(logits, make(TINY)(tokens((2, 8))), atol=0.05)
  cache = model.init_cache(2, 8)
  assert all(k.dtype == jnp.bfloat16 for k in cache["k"])


@CONFIGS
def test_every_parameter_has_logical_axes(cfg):
  state = nnx.state(make(cfg), nnx.Param)
  for path, variable in jax.tree.leaves_with_path(state, is_leaf=lambda v: isinstance(v, nnx.Param)):
    axes = variable.get_metadata()["out_sharding"]
    assert len(axes) == variable.ndim, (path, axes)
  layer_axes = [v.get_metadata()["out_sharding"][0] for v in jax.tree.leaves(
      nnx.state(make(cfg).layers, nnx.Param), is_leaf=lambda v: isinstance(v, nnx.Param))]
  assert set(layer_axes) == {"layers"}


def test_param_count_matches_allocated_model():
  for cfg in (TINY, GEMMA_LIKE):
    assert model_lib.count_params(cfg) == model_lib.count_params(make(cfg))
  d, v, m, layers = 32, 97, 64, 2
  assert model_lib.count_params(TINY) == v * d + layers * (4 * d * d + 3 * d * m)


def test_from_config_dict():
  model_dict = ml_collections.ConfigDict(dict(vocab_size=128, num_layers=2, d_model=32,
                                              num_heads=4, num_kv_heads=2, mlp_dim=64))
  train = ml_collections.ConfigDict(dict(compute_dtype="float32", param_dtype="float32",
                                         remat="full", steps=3))
  cfg = model_lib.ModelConfig.from_config_dict(model_dict, train)
  assert (cfg.num_kv_heads, cfg.head_dim, cfg.dtype, cfg.remat) == (2, 8, "float32", "full")
  assert model_lib.ModelConfig.from_config_dict(model_dict).dtype == "bfloat16"


@pytest.mark.parametrize("changes, message", [
    (dict(num_kv_heads=3), "not a multiple of num_kv_heads"),
    (dict(d_model=30, head_dim=0), "not divisible by num_heads"),
    (dict(norm="batchnorm"), "norm must be one of"),
    (dict(remat="sometimes"), "remat must be one of"),
    (dict(num_layers=0), "num_layers must be positive"),
    (dict(head_dim=7), "head_dim must be even"),
    (dict(attention_impl="cudnn", dtype="bfloat16", attn_logit_softcap=50.0), "softcap"),
    (dict(attention_impl="cudnn", dtype="bfloat16", sliding_window=8,
          sliding_window_layers="even"), "same sliding window on all layers"),
    (dict(attention_impl="cudnn"), "bfloat16 or float16"),
    (dict(attention_impl="flash"), "attention_impl must be one of"),
])
def test_bad_model_config_raises(changes, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(TINY, **changes)


class _Device:
  """What `ModelConfig.for_device` reads of a jax.Device."""

  def __init__(self, platform, device_kind, compute_capability=None):
    self.platform, self.device_kind = platform, device_kind
    if compute_capability is not None:
      self.compute_capability = compute_capability


BF16_AUTO = dataclasses.replace(TINY, dtype="bfloat16", attention_impl="auto", scan_layers=None)


@pytest.mark.parametrize("device, attention, scanned", [
    (_Device("cpu", "cpu"), "xla", True),
    (_Device("tpu", "TPU v5 lite"), "splash", True),
    (_Device("gpu", "NVIDIA H100 80GB HBM3", "9.0"), "cudnn", False),
    (_Device("gpu", "NVIDIA H100 80GB HBM3"), "cudnn", False),  # compile-only: no capability
    (_Device("gpu", "NVIDIA A100-SXM4-80GB", "8.0"), "cudnn", False),
    (_Device("gpu", "Tesla T4", "7.5"), "xla", False),  # cuDNN flash attention needs sm80+
    (_Device("gpu", "AMD Instinct MI300X"), "xla", False),
])
def test_auto_choices_follow_the_device(device, attention, scanned):
  chosen = BF16_AUTO.for_device(device)
  assert (chosen.attention_impl, chosen.scan_layers) == (attention, scanned)
  assert chosen.device_independent and not BF16_AUTO.device_independent
  assert dataclasses.replace(chosen, attention_impl="auto", scan_layers=None) == BF16_AUTO


def test_auto_attention_falls_back_to_xla_where_cudnn_cannot_compute_the_model():
  h100 = _Device("gpu", "NVIDIA H100 80GB HBM3", "9.0")
  for changes in (dict(attn_logit_softcap=50.0), dict(dtype="float32"),
                  dict(sliding_window=8, sliding_window_layers="even")):
    cfg = dataclasses.replace(BF16_AUTO, **changes)
    assert cfg.for_device(h100).attention_impl == "xla"
    assert cfg.for_device(_Device("tpu", "TPU v5 lite")).attention_impl == "splash"  # computes all
  explicit = dataclasses.replace(BF16_AUTO, attention_impl="xla", scan_layers=True)
  assert explicit.for_device(h100) == explicit


@pytest.mark.parametrize("device, recorded, attention, scanned", [
    (_Device("gpu", "NVIDIA H100 80GB HBM3", "9.0"), dict(attention_impl="xla", scan_layers=True),
     "xla", True),  # a run begun with XLA attention and a scan keeps them
    (_Device("gpu", "NVIDIA H100 80GB HBM3", "9.0"), dict(attention_impl="cudnn"), "cudnn", False),
    (_Device("cpu", "cpu"), dict(attention_impl="cudnn", scan_layers=False), "xla", False),
    (_Device("tpu", "TPU v4"), dict(attention_impl="auto", scan_layers=None), "splash", True),
    (_Device("tpu", "TPU v4"), dict(attention_impl="xla"), "xla", True),
    (_Device("tpu", "TPU v4"), dict(attention_impl="splash"), "splash", True),
    # Off TPUs a splash run keeps its uncapped packing: XLA attention, not cuDNN.
    (_Device("gpu", "NVIDIA H100 80GB HBM3", "9.0"), dict(attention_impl="splash"), "xla", False),
    (_Device("cpu", "cpu"), dict(attention_impl="splash"), "xla", True),
])
def test_a_resumed_run_keeps_its_recorded_choices_where_they_run(device, recorded, attention,
                                                                  scanned):
  chosen = BF16_AUTO.for_device(device, recorded)
  assert (chosen.attention_impl, chosen.scan_layers) == (attention, scanned)


def test_a_model_built_with_auto_choices_runs_the_portable_ones_without_asking_for_devices(
    monkeypatch):
  """The device policy is applied once, at start-up (`for_device`), never by the constructor: a
  model built from a config with "auto" left runs XLA attention and scanned layers anywhere."""
  def devices(*_):
    raise AssertionError("the model's constructor asked JAX for its devices")

  monkeypatch.setattr(jax, "devices", devices)
  model = model_lib.abstract_model(BF16_AUTO)
  assert model.cfg == BF16_AUTO.portable() == BF16_AUTO.for_device(_Device("cpu", "cpu"))
  assert (model.cfg.attention_impl, model.cfg.scan_layers) == ("xla", True)
  chosen = BF16_AUTO.for_device(_Device("gpu", "NVIDIA H100 80GB HBM3", "9.0"))
  assert model_lib.abstract_model(chosen).cfg == chosen  # choices made at start-up are kept


def test_unknown_or_missing_config_keys_raise():
  base = dict(vocab_size=128, num_layers=2, d_model=32, num_heads=4, mlp_dim=64)
  with pytest.raises(ValueError, match="unknown config.model keys: n_layers"):
    model_lib.ModelConfig.from_config_dict({**base, "n_layers": 3})
  with pytest.raises(ValueError, match="missing config.model keys: mlp_dim"):
    model_lib.ModelConfig.from_config_dict({k: v for k, v in base.items() if k != "mlp_dim"})


def test_decoding_without_positions_raises():
  model = make(TINY)
  with pytest.raises(ValueError, match="explicit positions"):
    run(model, tokens((1, 2)), cache=model.init_cache(1, 4))


def reference_layout(row, max_segments):
  """Lengths and start offsets of the runs of equal ids, extra runs merged into the last."""
  starts = [i for i in range(len(row)) if i == 0 or row[i] != row[i - 1]][:max_segments]
  ends = starts[1:] + [len(row)]
  lengths = [e - s for s, e in zip(starts, ends)]
  pad = max_segments - len(starts)
  return lengths + [-1] * pad, starts + [-1] * (pad + 1)


@pytest.mark.parametrize("max_segments", [1, 2, 3, 8])
def test_packed_layout(max_segments):
  rows = [[1, 1, 1, 2, 2, 3, 0, 0], [1] * 8, [1, 2, 3, 4, 5, 6, 7, 8], [5, 5, 0, 0, 0, 0, 0, 0]]
  lengths, offsets = attention.packed_layout(jnp.asarray(rows), max_segments)
  for row, got_len, got_off in zip(rows, lengths.tolist(), offsets.tolist()):
    assert (got_len, got_off) == reference_layout(row, max_segments)


BF16 = dataclasses.replace(TINY, dtype="bfloat16")  # cuDNN's attention computes no float32.


@pytest.mark.skipif("cudnn" not in BF16.attention_that_runs_on(jax.devices()[0]),
                    reason="cuDNN attention needs an NVIDIA GPU (sm80+)")
@pytest.mark.parametrize("window", [0, 5])
def test_cudnn_attention_matches_xla(window):
  xla = dataclasses.replace(TINY, d_model=128, num_heads=4, num_kv_heads=2, head_dim=32,
                            dtype="bfloat16", sliding_window=window, attention_impl="xla")
  cudnn = dataclasses.replace(xla, attention_impl="cudnn")
  x = tokens((2, 16))
  segment_ids = jnp.asarray([[1] * 7 + [2] * 6 + [0] * 3, [1] * 16])
  positions = jnp.asarray([list(range(7)) + list(range(6)) + [0, 1, 2], list(range(16))])

  def loss_and_grads(cfg, segments):
    model = make(cfg)

    def loss(model):
      logits = model(x, positions=None if segments is None else positions, segment_ids=segments)
      return jnp.sum(jax.nn.logsumexp(logits, -1) * (segment_ids > 0)), logits

    (_, logits), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    return logits, nnx.to_pure_dict(grads)

  for segments in (segment_ids, None):
    want_logits, want_grads = loss_and_grads(xla, segments)
    got_logits, got_grads = loss_and_grads(cudnn, segments)
    valid = (segment_ids > 0)[..., None] if segments is not None else True
    np.testing.assert_allclose(jnp.where(valid, got_logits, 0), jnp.where(valid, want_logits, 0),
                               atol=0.05)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=0.05, rtol=0.05),
                 got_grads, want_grads)


@pytest.mark.parametrize("spec, x_shape, w_shape", [
    ("btd,dhk->bthk", (2, 5, 8), (8, 3, 4)),  # q/k/v projections
    ("bthk,hkd->btd", (2, 5, 3, 4), (3, 4, 8)),  # attention output
    ("btd,dm->btm", (2, 5, 8), (8, 16)),  # gate/up
])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_weight_einsum_gradients_equal_autodiff(spec, x_shape, w_shape, dtype):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape), dtype)
  w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
  out_shape = jnp.einsum(spec, x, w.astype(dtype)).shape
  probe = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)

  def objective(einsum, x, w):  # a non-uniform cotangent, and w cast as the layers cast it
    return jnp.sum(einsum(spec, x, w.astype(dtype)).astype(jnp.float32) * probe)

  with jax.default_matmul_precision("highest"):
    got = jax.grad(lambda x, w: objective(model_lib.weight_einsum, x, w), (0, 1))(x, w)
    want = jax.grad(lambda x, w: objective(jnp.einsum, x, w), (0, 1))(x, w)
  for a, b in zip(got, want):
    assert a.dtype == b.dtype and a.shape == b.shape
    tol = 1e-6 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=tol, atol=tol)


def test_mlp_backward_copies_no_transposed_gradient_on_cpu():
  """XLA:CPU would copy the [tokens, mlp] gradients into a transposed layout (fused with SwiGLU's
  backward: a quarter of a 150M step) for autodiff's weight gradients; weight_einsum avoids it.
  Nor is the down projection's input (SwiGLU's product, recomputed in the backward) copied
  transposed: that projection's narrower gradient is."""
  b, t, d, m = 2, 48, 32, 160
  mlp_cfg = model_lib.ModelConfig(vocab_size=8, num_layers=1, d_model=d, num_heads=1, mlp_dim=m,
                                  dtype="float32")
  mlp = model_lib.GatedMLP(mlp_cfg, rngs=nnx.Rngs(0))
  norm = model_lib.Norm(mlp_cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(mlp)
  grad = jax.jit(jax.grad(lambda p, x: jnp.sum(nnx.merge(graphdef, p)(norm, x) ** 2)))
  hlo = grad.lower(params, jnp.ones((b, t, d))).compile().as_text()
  # Backward ops carry "transpose(jvp" in their op_name metadata.
  copies = [line for line in hlo.splitlines()
            if re.search(rf"= f32\[{m},{b * t}\]\S* fusion\(", line) and "transpose(jvp" in line]
  assert not copies, copies


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kv_major", [False, True])
def test_attention_gradients_equal_autodiff_of_plain_softmax(dtype, kv_major):
  """The attention's own backward (FlashAttention's dO . O identity) against autodiff of the
  plain softmax @ v, with GQA, a soft-cap, a causal mask and a fully masked (padding) query."""
  rng = np.random.default_rng(0)
  b, t, h, kv, hd = 2, 6, 4, 2, 8
  q = jnp.asarray(rng.standard_normal((b, t, h, hd)), dtype)
  # The cache's layout when kv_major: keys [B, KV, Dh, S], values [B, KV, S, Dh].
  k_shape, v_shape = ((b, kv, hd, t), (b, kv, t, hd)) if kv_major else ((b, t, kv, hd),) * 2
  k = jnp.asarray(rng.standard_normal(k_shape), dtype)
  v = jnp.asarray(rng.standard_normal(v_shape), dtype)
  mask = jnp.tril(jnp.ones((t, t), bool))[None].repeat(b, 0).at[1, 2].set(False)
  probe = jnp.asarray(rng.standard_normal((b, t, h, hd)), jnp.float32)

  def plain(q, k, v, mask, scale, softcap, *, kv_major):
    kv_dims = "bksd" if kv_major else "bskd"
    if kv_major:  # back to [B, KV, S, Dh], the layout the reference's einsums take
      k = k.swapaxes(2, 3)
    qg = q.reshape(b, t, kv, h // kv, hd)
    scores = jnp.einsum(f"btkgd,{kv_dims}->bkgts", qg * jnp.asarray(scale, q.dtype), k,
                        preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, None, None], 3.0 * jnp.tanh(scores / 3.0), attention._MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum(f"bkgts,{kv_dims}->btkgd", probs, v).reshape(b, t, h, hd)

  def objective(attention, q, k, v):
    out = attention(q, k, v, mask, 0.5, 3.0, kv_major=kv_major)
    return jnp.sum(out.astype(jnp.float32) * probe)

  with jax.default_matmul_precision("highest"):
    got = jax.grad(lambda *a: objective(attention._xla_attention, *a), (0, 1, 2))(q, k, v)
    want = jax.grad(lambda *a: objective(plain, *a), (0, 1, 2))(q, k, v)
  tol = 1e-5 if dtype == jnp.float32 else 3e-2
  for a, w in zip(got, want):
    assert a.dtype == w.dtype == dtype
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(w, np.float32),
                               rtol=tol, atol=tol)


def test_a_layer_keeps_only_what_its_backward_needs():
  """What a layer's forward keeps for its backward (the arrays its VJP closes over): no
  [.., T, S] attention probabilities, two [B, T, d] arrays (each norm's input, not its output),
  two [B, T, mlp] arrays (the gate and up projections) and two [B, T, H, Dh] (the queries and
  the attention's output), where autodiff kept the probabilities, eight [B, T, d] and the
  MLP's elementwise intermediates as well."""
  cfg = dataclasses.replace(TINY, num_kv_heads=2, norm="rmsnorm", norm_scale=True,
                            attention_impl="xla", scan_layers=True)
  b, t = 2, 8
  graphdef, params = nnx.split(model_lib.Block(cfg, rngs=nnx.Rngs(0)))
  positions = arange_positions(b, 0, t)
  angles = positions[..., None].astype(jnp.float32) * model_lib.rope_frequencies(cfg)
  mask = attention.attention_mask(positions, positions)
  x = jax.random.normal(jax.random.key(0), (b, t, cfg.d_model))
  _, layer_vjp = jax.vjp(
      lambda x, p: nnx.merge(graphdef, p)(x, jnp.sin(angles), jnp.cos(angles), mask)[0],
      x, params)
  kept = [r.shape for r in jax.tree.leaves(layer_vjp) if r.dtype != jnp.bool_]
  assert not [s for s in kept if s[-2:] == (t, t)], kept
  assert kept.count((b, t, cfg.d_model)) == 2, kept
  assert kept.count((b, t, cfg.mlp_dim)) == 2, kept
  assert kept.count((b, t, cfg.num_heads, cfg.head_dim)) == 2, kept
