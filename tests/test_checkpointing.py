"""Checkpoints: exact round trips, keep-last-k, resharding on restore, loading for inference."""
import gc
import json.decoder
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import test_tiny
from editseq import checkpointing
from editseq import sharding
from editseq import trainer


def _program(mesh=(-1, 1, 1), devices=None):
  config = test_tiny.get_config()
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
  return trainer.TrainProgram(config, sharding.make_mesh(config.mesh, devices))


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  """A workdir holding steps 1..4 of a one-device state (keep 2) and the state of step 4."""
  workdir = tmp_path_factory.mktemp("run")
  program = _program(devices=jax.devices()[:1])
  with jax.set_mesh(program.mesh):
    state = program.init(jax.random.key(0))
  checkpointing.save_config(str(workdir), program.config)
  ckpt = checkpointing.Checkpointer(str(workdir), every=1, keep=2)
  for step in range(1, 5):
    state = dict(state, step=jnp.asarray(step, jnp.int32))
    ckpt.save(step, state, {"epoch": 0, "row": 8 * step})
  ckpt.wait_until_finished()
  ckpt.close()
  return workdir, program, jax.device_get(state)


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_keeps_the_last_k_and_restores_exactly(saved_run):
  workdir, program, want = saved_run
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3", "4"]
  ckpt = checkpointing.Checkpointer(str(workdir), every=1, keep=2)
  assert ckpt.latest_step() == 4
  state, data_state = ckpt.restore(4, program.abstract_state)
  ckpt.close()
  assert data_state == {"epoch": 0, "row": 32}
  _assert_trees_equal(jax.device_get(state), want)


def test_restores_onto_a_different_mesh(saved_run):
  workdir, _, want = saved_run
  program = _program((2, 2, 2))
  ckpt = checkpointing.Checkpointer(str(workdir), every=1, keep=2)
  state, _ = ckpt.restore(4, program.abstract_state)
  ckpt.close()
  _assert_trees_equal(jax.device_get(state), want)
  up = state["params"]["layers"]["mlp"]["up"]
  assert up.sharding == program.param_shardings["layers"]["mlp"]["up"]
  assert len(up.sharding.device_set) == 8


def truncate_largest_file(step_dir):
  """Cuts the largest file of a checkpoint step (its array data) to half its size."""
  largest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  with open(largest, "r+b") as f:
    f.truncate(largest.stat().st_size // 2)
  return largest.relative_to(step_dir)


def test_a_failed_restore_ends_all_its_reads_before_it_raises(tmp_path, capfd, caplog, monkeypatch):
  """orbax gives up at the first unreadable array while its other reads are still in flight;
  those must end before the error reaches us, or they print tracebacks later from reader threads
  ("Event loop is closed"), the asyncio log ("Task exception was never retrieved") and
  collected coroutines ("Exception ignored in"). A race, so tried 20 times on a state of random
  values (zeros compress to nothing: the cut would hit one array) sharded over 8 devices."""
  program = _program()
  with jax.set_mesh(program.mesh):
    state = program.init(jax.random.key(0))
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  state = jax.tree.unflatten(treedef, [
      jax.random.normal(k, x.shape, x.dtype).astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating)
      else x for k, x in zip(keys, leaves)])
  ckpt = checkpointing.Checkpointer(str(tmp_path), every=1, keep=2)
  for step in (1, 2):
    ckpt.save(step, dict(state, step=jnp.asarray(step, jnp.int32)), {"epoch": 0, "row": step})
  ckpt.wait_until_finished()
  truncate_largest_file(tmp_path / "checkpoints" / "2")
  unraisable = []
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  for _ in range(20):
    with pytest.raises(Exception, match="Encountered error while reading array index"):
      ckpt.restore(2, program.abstract_state)
  restored, _ = ckpt.restore(1, program.abstract_state)  # the steps that do restore still do
  ckpt.close()
  _assert_trees_equal(jax.device_get(restored), jax.device_get(dict(state, step=1)))
  gc.collect()
  assert capfd.readouterr().err == ""
  assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
  assert [f"{u.err_msg} {u.object!r}: {u.exc_value!r}" for u in unraisable] == []


def test_config_round_trips(saved_run):
  workdir, program, _ = saved_run
  assert checkpointing.load_config(str(workdir)).to_dict() == program.config.to_dict()
  assert checkpointing.load_config(str(workdir / "missing")) is None


@pytest.mark.parametrize("which", ["workdir", "step_dir"])
def test_load_for_inference_gives_the_saved_model(saved_run, which):
  workdir, program, want = saved_run
  path = workdir if which == "workdir" else workdir / "checkpoints" / "3"
  model, config, vocab = checkpointing.load_for_inference(str(path))
  assert config.to_dict() == program.config.to_dict()
  assert vocab.vocab_size <= config.model.vocab_size
  text = pathlib.Path(json.decoder.__file__).read_text()[:2000]
  tokens = jnp.asarray([vocab.encode(text)[:64]], jnp.int32)
  reference = nnx.merge(program.graphdef, want["params"])
  np.testing.assert_array_equal(np.asarray(model(tokens)), np.asarray(reference(tokens)))


def test_load_for_inference_runs_the_model_as_this_device_can(saved_run, tmp_path):
  """A run trained on GPUs (its config.json: cuDNN attention, unrolled layers) loads on a CPU
  with XLA attention and computes the same logits."""
  workdir, program, want = saved_run
  gpu_run = tmp_path / "gpu_run"
  config = program.config.copy_and_resolve_references()
  config.model.attention_impl, config.model.scan_layers = "cudnn", False
  config.train.compute_dtype = "bfloat16"
  checkpointing.save_config(str(gpu_run), config)
  step_dir = gpu_run / "checkpoints" / "4"
  step_dir.parent.mkdir(parents=True)
  step_dir.symlink_to(workdir / "checkpoints" / "4")
  model, loaded, _ = checkpointing.load_for_inference(str(step_dir))
  assert (loaded.model.attention_impl, loaded.model.scan_layers) == ("cudnn", False)
  assert (model.cfg.attention_impl, model.cfg.scan_layers) == ("xla", True)
  _assert_trees_equal(jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param))),
                      want["params"])
  tokens = jnp.arange(1, 33, dtype=jnp.int32)[None]
  assert np.isfinite(np.asarray(model(tokens))).all()


def test_load_for_inference_can_shard_over_a_mesh(saved_run):
  workdir, _, want = saved_run
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2, "dcn_data": 1})
  model, _, _ = checkpointing.load_for_inference(str(workdir), mesh=mesh)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert len(params["layers"]["mlp"]["up"].sharding.device_set) == 8
  _assert_trees_equal(jax.device_get(params), want["params"])


def test_missing_checkpoints_are_reported_with_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    checkpointing.resolve_step_dir(str(tmp_path))


def test_hugging_face_folders_are_told_apart_from_runs(saved_run, tmp_path):
  (tmp_path / "config.json").write_text("{}")
  (tmp_path / "model.safetensors").write_bytes(b"")
  assert checkpointing.is_hf_model_dir(str(tmp_path))
  assert not checkpointing.is_hf_model_dir(str(saved_run[0]))


def test_init_from_a_hugging_face_folder_loads_its_weights(tmp_path):
  """train.init_from = an OLMo folder (TinyCodeLM's format): same logits, program's shardings."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  program = _program((2, 2, 2))
  cfg = program.model_cfg
  torch.manual_seed(0)
  hf_model = transformers.OlmoForCausalLM(transformers.OlmoConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=True))
  hf_model.save_pretrained(tmp_path)
  assert checkpointing.is_hf_model_dir(str(tmp_path))

  params = trainer.load_pretrained_params(str(tmp_path), program)
  up = params["layers"]["mlp"]["up"]
  assert up.sharding == program.param_shardings["layers"]["mlp"]["up"]
  tokens = np.frombuffer(pathlib.Path(json.decoder.__file__).read_bytes()[:48], np.uint8)
  tokens = tokens.astype(np.int64)[None]
  with torch.no_grad():
    want = hf_model(torch.from_numpy(tokens)).logits.numpy()
  got = nnx.merge(program.graphdef, jax.device_get(params))(jnp.asarray(tokens, jnp.int32))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-3, atol=1e-3)
