"""The train step on 8 simulated devices: every mesh computes what one device computes.

Batches are real text: bytes of standard-library modules (vocabulary 256), packed two documents
to a row with a masked prompt and trailing padding, as the input pipeline lays them out.
"""
import functools
import json.decoder
import pathlib

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
