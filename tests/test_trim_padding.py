"""Batches of unpacked rows cut to their longest example (`data.trim_to_multiple`): the width
rule, the same loss and update as the full-width step, and a CLI run that trains on the narrower
batches and counts only the positions it computed in tokens/s."""
import json

import jax
import numpy as np
from editseq import default_data, input_pipeline, sharding, trainer
from tests import test_train
from tests.numerics import assert_close_up_to_reordering

UNPACKED = {"data.pack": False, "data.trim_to_multiple": 32, "train.eval_every": 0,
            "train.checkpoint_every": 0, "train.steps": 4}
LONG_ROWS = {"data.seq_len": 1024, "model.max_seq_len": 1024}  # longer than any example here


def _program(overrides):
  config = test_train._config({**UNPACKED, **overrides})
  return trainer.TrainProgram(config, sharding.make_mesh(config.mesh)), config


def _rows(lengths, seq_len=128):
  segment_ids = np.zeros((len(lengths), seq_len), np.int32)
  for row, length in enumerate(lengths):
    segment_ids[row, :length] = 1
  return {"segment_ids": segment_ids}


def test_the_width_is_the_longest_example_rounded_up():
  program, _ = _program({})
  assert program.used_width(_rows([5, 40, 0, 12, 33, 1, 2, 3])) == 64
  assert program.used_width(_rows([1] * 8)) == 32
  assert program.used_width(_rows([0] * 8)) == 32  # never an empty batch
  assert program.used_width(_rows([128] + [3] * 7)) == 128
  off, _ = _program({"data.trim_to_multiple": 0})
  assert off.used_width(_rows([5] * 8)) == 128
  packed, _ = _program({"data.pack": True})
  assert packed.used_width(_rows([5] * 8)) == 128


def test_a_trimmed_step_gives_the_full_steps_loss_and_update():
  program, config = _program(LONG_ROWS)
  vocab = default_data.config_vocabulary(config.data)
  input_pipeline.validate_data_config(config, vocab, splits=("train",), process_count=1)
  iterator = input_pipeline.make_train_iterator(config, vocab, split="train")
  try:  # The first batch whose longest example is shorter than a row.
    local = next(b for b in iterator if program.used_width(b) < config.data.seq_len)
  finally:
    iterator.close()
  width = program.used_width(local)
  with jax.set_mesh(program.mesh):
    state = program.init(jax.random.key(0))
    full_state, full = program.train_step(jax.tree.map(jax.numpy.copy, state),
                                          program.global_batch(local))
    cut_state, cut = program.train_step(state, program.global_batch(local, width))
  assert program.global_batch(local, width)["inputs"].shape == (8, width)
  assert float(cut["loss_tokens"]) == float(full["loss_tokens"]) > 0
  terms = int(full["loss_tokens"])
  assert_close_up_to_reordering(jax.device_get(cut["loss"]), jax.device_get(full["loss"]),
                                terms=terms)
  assert_close_up_to_reordering(jax.device_get(cut["grad_norm"]),
                                jax.device_get(full["grad_norm"]), terms=terms)
  # AdamW's first update is about lr * sign(grad): the parameters agree to the update's scale.
  for a, b in zip(jax.tree.leaves(jax.device_get(cut_state["params"])),
                  jax.tree.leaves(jax.device_get(full_state["params"]))):
    np.testing.assert_allclose(a, b, rtol=0, atol=2 * config.optimizer.learning_rate)


def test_cli_trains_unpacked_batches_cut_or_not_alike(tmp_path):
  losses = {}
  for multiple in (0, 32):
    workdir = tmp_path / f"run{multiple}"
    result = test_train._run_cli(workdir, {**UNPACKED, "data.seq_len": 256,
                                           "model.max_seq_len": 256,
                                           "data.trim_to_multiple": multiple})
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    losses[multiple] = [r["loss"] for r in records]
  # Only the order of fp32 sums differs, through four AdamW steps.
  np.testing.assert_allclose(losses[32], losses[0], rtol=1e-4)
