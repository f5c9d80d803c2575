"""The train step on 8 simulated devices: every mesh computes what one device computes.

Batches are real text: bytes of standard-library modules (vocabulary 256), packed two documents
to a row with a masked prompt and trailing padding, as the input pipeline lays them out.
"""
import functools
import json.decoder
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from configs import test_tiny
from editseq import sharding
from editseq import trainer
from tests import numerics

SEQ_LEN = 64
BATCH = 8


def _config(mesh=(-1, 1, 1), **overrides):
  config = test_tiny.get_config()
  config.model.vocab_size = 256
  config.data.seq_len = SEQ_LEN
  config.data.global_batch_size = BATCH
  config.train.compute_dtype = "float32"
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def _real_batch(seed: int = 0) -> dict[str, np.ndarray]:
  """Rows of two packed byte-level documents: prompt (first 8 tokens) masked, tail padded."""
  text = pathlib.Path(json.decoder.__file__).read_bytes()
  rng = np.random.default_rng(seed)
  rows = {k: np.zeros((BATCH, SEQ_LEN), np.int32)
          for k in ("inputs", "targets", "loss_mask", "segment_ids", "positions")}
  for r in range(BATCH):
    cut, end = rng.integers(16, 40), rng.integers(SEQ_LEN - 12, SEQ_LEN + 1)
    for seg, (lo, hi) in enumerate([(0, cut), (cut, end)], start=1):
      start = rng.integers(0, len(text) - SEQ_LEN - 1)
      doc = np.frombuffer(text[start:start + hi - lo + 1], np.uint8).astype(np.int32)
      rows["inputs"][r, lo:hi] = doc[:-1]
      rows["targets"][r, lo:hi] = doc[1:]
      rows["segment_ids"][r, lo:hi] = seg
      rows["positions"][r, lo:hi] = np.arange(hi - lo)
      rows["loss_mask"][r, lo + 8:hi] = 1
  return rows


BATCHES = (_real_batch(0), _real_batch(1))


@functools.cache
def _initial_state():
  """The one-device program's initial train state, on the host: every run starts from it."""
  config = _config()
  program = trainer.TrainProgram(config, sharding.make_mesh(config.mesh, jax.devices()[:1]))
  with jax.set_mesh(program.mesh):
    return jax.device_get(program.init(jax.random.key(0)))


@functools.cache
def _run(mesh=(-1, 1, 1), reduction="mean", accum=1, loss_chunk=0):
  """Two train steps: per-step metrics, final parameters, final state's specs, donation."""
  config = _config(mesh, **{"train.loss_reduction": reduction,
                            "optimizer.grad_accum_steps": accum,
                            "train.loss_chunk_size": loss_chunk})
  devices = jax.devices()[:1] if mesh == (-1, 1, 1) else jax.devices()
  initial = _initial_state()
  program = trainer.TrainProgram(config, sharding.make_mesh(config.mesh, devices))
  with jax.set_mesh(program.mesh):
    state = jax.device_put(initial, program.state_shardings)
    first_params = state["params"]
    history = []
    for batch in BATCHES:
      state, step_metrics = program.train_step(state, program.global_batch(batch))
      history.append(jax.device_get(step_metrics))
  specs = jax.tree.map(lambda x: x.sharding.spec, state)
  donated = all(x.is_deleted() for x in jax.tree.leaves(first_params))
  return history, jax.device_get(state["params"]), specs, donated


def _assert_same_run(got, want, keys=("loss", "grad_norm", "learning_rate", "loss_tokens")):
  for got_step, want_step in zip(got[0], want[0]):
    for key in keys:
      np.testing.assert_allclose(got_step[key], want_step[key], rtol=2e-5, err_msg=key)
  # Each weight's gradient sums over every token of the batch, in an order the mesh decides. The
  # first step's learning rate is 0 (warmup) and AdamW's second step moves a weight by lr * g/|g|,
  # which a reordered g changes only where g is within its rounding of zero: what is left is the
  # rounding of sums of BATCH * SEQ_LEN terms at each tensor's scale.
  numerics.assert_close_up_to_reordering(got[1], want[1], terms=BATCH * SEQ_LEN)


@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_meshes_match_one_device(mesh):
  _assert_same_run(_run(mesh), _run())


def test_state_is_sharded_by_the_rules_and_donated():
  _, _, specs, donated = _run((2, 2, 2))
  up = specs["params"]["layers"]["mlp"]["up"]
  assert up == PartitionSpec(None, "fsdp", "tensor")
  adam = specs["opt_state"][1][0]
  assert adam.mu["layers"]["mlp"]["up"] == adam.nu["layers"]["mlp"]["up"] == up
  assert adam.count == specs["step"] == PartitionSpec()
  assert donated


def test_gradient_accumulation_equals_the_big_batch():
  _assert_same_run(_run((2, 2, 2), accum=2), _run())


def test_chunked_loss_trains_like_the_whole_sequence_loss():
  # Chunks of 24 leave a partial last chunk (padded); microbatches run it inside the step's scan.
  _assert_same_run(_run((2, 2, 2), accum=2, loss_chunk=24), _run())


@pytest.mark.slow
def test_gradient_accumulation_with_summed_loss():
  _assert_same_run(_run(reduction="sum", accum=4), _run(reduction="sum"))


@pytest.mark.slow
def test_summed_loss_gradient_is_token_count_times_mean_gradient():
  got, want = _run(reduction="sum")[0][0], _run()[0][0]
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-6)
  np.testing.assert_allclose(got["grad_norm"], want["grad_norm"] * want["loss_tokens"], rtol=1e-4)



def smollm2_step_memory_ratio() -> float:
  """(Arguments + temporaries) / (parameter + AdamW bytes) of the compiled train step at the
  SmolLM2-135M shape of README.md's performance table, on one device."""
  from configs import llama31_8b  # pylint: disable=import-outside-toplevel
  config = llama31_8b.get_config()
  config.model.update(vocab_size=49152, num_layers=30, d_model=576, num_heads=9, num_kv_heads=3,
                      mlp_dim=1536, tie_embeddings=True, rope_base=100000.0,
                      rope_scaling_factor=1.0, max_seq_len=2048)
  config.train.remat = "none"
  config.train.compute_dtype = "float32"
  config.mesh.fsdp, config.mesh.data = 1, -1
  config.data.global_batch_size, config.data.seq_len = 4, 512
  program = trainer.TrainProgram(config, sharding.make_mesh(config.mesh, jax.devices()[:1]))
  memory = program.lower_train_step().compile().memory_analysis()
  state_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(
      (program.abstract_state["params"], program.abstract_state["opt_state"])))
  return (memory.argument_size_in_bytes + memory.temp_size_in_bytes) / state_bytes


@pytest.mark.slow
def test_train_step_memory_at_the_smollm2_135m_shape_is_bounded_by_its_state():
  """Compile only, in a process with one CPU device as `editseq.perf.bench_train` runs it
  (not the tests' 8 simulated ones): arguments and temporaries
  of the SmolLM2-135M-shaped step (30 layers, d 576, 9/3 heads, vocab 49,152, tied, fp32,
  4 x 512, no remat) need at most 2.6x its parameter + AdamW bytes (3.75x when the norms'
  outputs, the MLP's elementwise intermediates and a second copy of each layer's attention
  output were kept, the latter where the output was constrained to its sharding after the
  attention; 2.63x with only that copy), so that the process's peak stays under 3x with
  the runtime's own memory."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run(
      [sys.executable, "-c", "from tests import test_trainer_sharding as t; "
       "print(t.smollm2_step_memory_ratio())"],
      cwd=pathlib.Path(__file__).parent.parent, env=env, capture_output=True, text=True,
      check=True)
  ratio = float(result.stdout.split()[-1])
  assert ratio <= 2.6, ratio
