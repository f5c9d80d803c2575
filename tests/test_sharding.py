"""Sharding rules, meshes, divisibility errors, compile-only checks and mesh-invariance of the model.

Runs on the 8 simulated CPU devices that tests/conftest.py sets up.
"""
import dataclasses
import importlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from editseq import model as model_lib
from editseq import sharding
from tests import numerics

TINY = model_lib.ModelConfig(vocab_size=128, num_layers=2, d_model=32, num_heads=4,
                             num_kv_heads=2, mlp_dim=64, dtype="float32", tie_embeddings=False,
                             norm="rmsnorm", norm_scale=True)
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 4, 2), (1, 1, 8)]


def mesh_of(shape, dcn_data=1):
  data, fsdp, tensor = shape
  return sharding.make_mesh(dict(data=data, fsdp=fsdp, tensor=tensor, dcn_data=dcn_data))


def param_specs(cfg, mesh, rules=None):
  state = nnx.state(model_lib.abstract_model(cfg), nnx.Param)
  shardings = nnx.to_pure_dict(sharding.state_shardings(state, mesh, rules))
  return jax.tree.map(lambda s: s.spec, shardings)


def test_golden_parameter_specs_default_rules():
  specs = param_specs(TINY, mesh_of((2, 2, 2)))
  assert specs == {
      "embed": P("tensor", "fsdp"),
      "lm_head": P("fsdp", "tensor"),
      "final_norm": {"scale": P(None)},
      "layers": {
          "attn": {"q": P(None, "fsdp", "tensor", None), "k": P(None, "fsdp", "tensor", None),
                   "v": P(None, "fsdp", "tensor", None), "o": P(None, "tensor", None, "fsdp")},
          "mlp": {"gate": P(None, "fsdp", "tensor"), "up": P(None, "fsdp", "tensor"),
                  "down": P(None, "tensor", "fsdp")},
          "attn_norm": {"scale": P(None, None)},
          "mlp_norm": {"scale": P(None, None)},
      },
  }


def test_golden_parameter_specs_custom_rules():
  # Pure data parallelism plus FSDP over both data axes (ZeRO-3 across all 8 devices).
  rules = tuple((name, ("data", "fsdp") if name == "embed" else None)
                for name, _ in sharding.DEFAULT_RULES)
  specs = param_specs(TINY, mesh_of((2, 4, 1)), rules)
  assert specs["embed"] == P(None, ("data", "fsdp"))
  assert specs["layers"]["attn"]["o"] == P(None, None, None, ("data", "fsdp"))
  assert specs["layers"]["mlp"]["gate"] == P(None, ("data", "fsdp"), None)


def test_logical_to_spec_resolves_conflicts_and_unknown_names():
  rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"))
  assert sharding.logical_to_spec(("batch", "embed"), rules) == P(("data", "fsdp"), None)
  assert sharding.logical_to_spec(("embed", "batch"), rules) == P("fsdp", "data")
  assert sharding.logical_to_spec((None, "mlp"), rules) == P(None, "tensor")
  with pytest.raises(ValueError, match="'hidden' has no sharding rule"):
    sharding.logical_to_spec(("hidden",), rules)


def test_use_rules_sets_the_rules_for_activations():
  assert sharding.logical_to_spec(("act_batch", "act_mlp")) == P(("data", "fsdp"), "tensor")
  with sharding.use_rules((("act_batch", "data"), ("act_mlp", None))):
    assert sharding.logical_to_spec(("act_batch", "act_mlp")) == P("data", None)
  assert sharding.current_rules() == sharding.DEFAULT_RULES


def test_make_mesh_shapes_and_fill():
  assert mesh_of((8, 1, 1)).shape == {"data": 8, "fsdp": 1, "tensor": 1}
  assert sharding.make_mesh(dict(data=-1, fsdp=2, tensor=2)).shape == {
      "data": 2, "fsdp": 2, "tensor": 2}
  mesh = sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1), jax.devices()[:4])
  assert mesh.shape["fsdp"] == 4
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("mesh_config, message", [
    (dict(data=4, fsdp=4, tensor=1), "needs 16 devices, have 8"),
    (dict(data=-1, fsdp=-1, tensor=1), "at most one mesh axis may be -1"),
    (dict(data=-1, fsdp=3, tensor=1), "does not divide 8 devices"),
    (dict(data=0, fsdp=1, tensor=1), "must be positive or -1"),
    (dict(data=-1, fsdp=1, tensor=1, dcn_data=3), "cannot form dcn_data=3 slices"),
])
def test_bad_mesh_config_raises(mesh_config, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(mesh_config)


def test_multislice_mesh_keeps_slices_together():
  # Two fake 4-device slices: the data axis spans both; fsdp x tensor blocks stay in one slice.
  devices = [types.SimpleNamespace(id=i, slice_index=i // 4, process_index=i // 4,
                                   platform="cpu", device_kind="cpu") for i in range(8)]
  array = sharding.device_array(dict(data=1, fsdp=2, tensor=2, dcn_data=2), devices)
  assert array.shape == (2, 2, 2)
  slices = np.vectorize(lambda d: d.slice_index)(array)
  np.testing.assert_array_equal(slices[0], 0)
  np.testing.assert_array_equal(slices[1], 1)


@pytest.mark.parametrize("changes, mesh_shape, message", [
    (dict(num_heads=6, num_kv_heads=6, d_model=48), (2, 1, 4), r"heads' of size 6"),
    (dict(num_kv_heads=2), (2, 1, 4), r"'kv_heads' of size 2"),
    (dict(mlp_dim=63), (4, 1, 2), r"'mlp' of size 63"),
    (dict(d_model=36, head_dim=8), (1, 8, 1), r"'embed' of size 36"),
    (dict(vocab_size=100), (1, 1, 8), r"'vocab' of size 100"),
])
def test_shapes_that_do_not_divide_the_mesh_raise(changes, mesh_shape, message):
  cfg = dataclasses.replace(TINY, **changes)
  with pytest.raises(ValueError, match=message):
    param_specs(cfg, mesh_of(mesh_shape))


def test_batch_that_does_not_divide_raises():
  mesh = mesh_of((2, 2, 2))
  assert sharding.batch_sharding(mesh, 8).spec == P(("data", "fsdp"), None)
  with pytest.raises(ValueError, match="'act_batch' of size 6"):
    sharding.batch_sharding(mesh, 6)


def test_cache_shardings():
  mesh = mesh_of((4, 1, 2))
  cache = jax.eval_shape(lambda: model_lib.init_cache(TINY, 4, 16))
  specs = jax.tree.map(lambda s: s.spec, sharding.tree_shardings(
      cache, model_lib.cache_logical_axes(TINY.num_layers), mesh))
  kv = (P(("data", "fsdp"), "tensor", None, None),) * TINY.num_layers
  assert specs == {"k": kv, "v": kv, "slot_pos": P(("data", "fsdp"), None), "index": P()}


def loss_fn(model, tokens, targets, segment_ids):
  logits = model(tokens, segment_ids=segment_ids)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return jnp.sum(losses * (segment_ids > 0))


def loss_and_grads(state, graphdef, batch):
  return jax.value_and_grad(lambda s: loss_fn(nnx.merge(graphdef, s), *batch))(state)


def test_forward_and_grads_are_mesh_invariant():
  model = model_lib.Transformer(TINY, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model, nnx.Param)
  tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, TINY.vocab_size)
  segment_ids = jnp.concatenate([jnp.ones((8, 10), jnp.int32), 2 * jnp.ones((8, 4), jnp.int32),
                                 jnp.zeros((8, 2), jnp.int32)], axis=1)
  batch = (tokens, jnp.roll(tokens, -1, axis=1), segment_ids)
  step = jax.jit(loss_and_grads, static_argnums=1)
  ref_loss, ref_grads = step(state, graphdef, batch)
  for shape in [(8, 1, 1), (2, 2, 2), (1, 4, 2)]:
    mesh = mesh_of(shape)
    shardings = sharding.state_shardings(state, mesh)
    batch_sharding = sharding.batch_sharding(mesh, 8)
    sharded_step = jax.jit(loss_and_grads, static_argnums=1, out_shardings=(None, shardings))
    with jax.set_mesh(mesh):
      loss, grads = sharded_step(jax.device_put(state, shardings), graphdef,
                                 jax.device_put(batch, batch_sharding))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    numerics.assert_close_up_to_reordering(nnx.to_pure_dict(grads), nnx.to_pure_dict(ref_grads),
                                           terms=tokens.size)


def compile_train_step(cfg, mesh, batch=8, seq_len=128):
  """Lowers and compiles loss + grads from abstract, sharded inputs (nothing is allocated)."""
  graphdef, state = nnx.split(model_lib.abstract_model(cfg), nnx.Param)
  shardings = sharding.state_shardings(state, mesh)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          state, shardings)
  data = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32,
                              sharding=sharding.batch_sharding(mesh, batch))
  step = jax.jit(loss_and_grads, static_argnums=1, out_shardings=(None, shardings))
  with jax.set_mesh(mesh):
    return step.lower(abstract, graphdef, (data, data, data)).compile()


def load_config(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  return model_lib.ModelConfig.from_config_dict(config.model, config.train)


def config_150m():
  return load_config("tinycodelm_150m")


@pytest.mark.parametrize("name", ["tinycodelm_400m", "gemma2_2b", "phi3_mini", "phi3_medium",
                                  "llama31_8b"])
@pytest.mark.parametrize("shape", [(1, 8, 1), (2, 2, 2)])
def test_large_configs_shard_abstractly(name, shape):
  specs = param_specs(load_config(name), mesh_of(shape))
  assert specs["layers"]["mlp"]["gate"] == P(None, "fsdp", "tensor")


@pytest.mark.slow
def test_llama_8b_compiles_with_fsdp_and_tensor_parallelism():
  compile_train_step(load_config("llama31_8b"), mesh_of((1, 4, 2)), batch=4, seq_len=256)


def test_150m_compiles_on_2x2x2():
  compiled = compile_train_step(config_150m(), mesh_of((2, 2, 2)))
  assert compiled.cost_analysis() is not None


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (1, 2, 4)])
def test_150m_compiles_on_more_meshes(shape):
  compile_train_step(config_150m(), mesh_of(shape))


def test_150m_heads_do_not_split_8_ways():
  with pytest.raises(ValueError, match="heads' of size 12 is not divisible"):
    compile_train_step(config_150m(), mesh_of((1, 1, 8)))
