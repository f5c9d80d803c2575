"""The finetuning recipe: `train.epochs` (steps derived from the data), the paper's configs, and
the warning about examples longer than a row."""
import logging
import subprocess

import numpy as np
import pytest

from configs import test_tiny, tinycodelm_150m_baseline, tinycodelm_150m_lintseq
from editseq import checkpointing
from editseq import default_data
from editseq import input_pipeline
from editseq import metrics
from editseq import optimizer
from editseq import trainer
from tests import test_train
from tests.conftest import REPO_ROOT

# test_tiny on the small default data, a few steps' worth of an epoch, no evals.
EPOCHS = 0.02
OVERRIDES = {"train.epochs": EPOCHS, "train.eval_every": 0, "train.checkpoint_every": 2}


@pytest.fixture(scope="module")
def vocab():
  return default_data.default_vocabulary()


def _config(overrides=OVERRIDES):
  return test_train._config(overrides)


def _source(config, vocab):
  input_pipeline.validate_data_config(config, vocab, splits=("train",), process_count=1)
  return input_pipeline.config_source(config, vocab, "train")


def _run_cli(workdir, overrides=OVERRIDES, *extra):
  return subprocess.run([*test_train._command(workdir, overrides), *extra], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=600)


def test_epoch_steps_round_up_and_read_epochs_as_written():
  assert trainer.epoch_steps(2, 300, 512) == 2
  assert trainer.epoch_steps(10, 60, 512) == 2
  assert trainer.epoch_steps(1, 512, 512) == 1 and trainer.epoch_steps(1, 513, 512) == 2
  assert 1.1 * 50 > 55 and trainer.epoch_steps(1.1, 50, 1) == 55  # not 56


@pytest.mark.parametrize("pack", [False, True])
def test_steps_are_derived_from_the_rows_of_an_epoch(vocab, pack):
  """Unpacked, a row is one example (each padded to seq_len): an epoch is the examples that
  fit; packed, it is the rows epoch 0 packs into. The derived steps cover exactly that many
  rows, the last step's batch completed from the next epoch."""
  config = _config({**OVERRIDES, "data.pack": pack, "train.epochs": 1.5, "data.seq_len": 512,
                    "model.max_seq_len": 512})
  source = _source(config, vocab)
  rows = source.rows_per_epoch
  [part] = source.parts
  if pack:
    assert rows == source.plan(0).num_rows < len(part.units)
  else:
    assert rows == len(part.units) == len(part.store) - part.units.num_dropped
  derived = trainer.with_epoch_steps(config, source)
  batch = config.data.global_batch_size
  assert derived.train.steps == -(-3 * rows // (2 * batch))
  assert (derived.train.steps - 1) * batch < 1.5 * rows <= derived.train.steps * batch
  assert config.train.steps == test_tiny.get_config().train.steps  # the caller's is untouched
  unchanged = _config({**OVERRIDES, "train.epochs": 0.0})
  assert trainer.with_epoch_steps(unchanged, source) is unchanged


def test_examples_longer_than_a_row_are_counted_and_warned_about(vocab, caplog):
  """Unpacked or packed, an example longer than seq_len + 1 tokens is truncated to one row:
  the warning says how many of the split's examples, their share and the tokens lost."""
  config = _config({**OVERRIDES, "data.pack": False})
  source = _source(config, vocab)
  [part] = source.parts
  longer = int(np.sum(part.store.lengths > config.data.seq_len + 1))
  assert longer == part.units.num_truncated > 0
  with caplog.at_level(logging.WARNING):
    source.warn_overlong()
  [record] = [r for r in caplog.records if "longer than a row" in r.getMessage()]
  assert record.levelno == logging.WARNING
  share = f"{100 * longer / len(part.store):.1f}%"
  assert f"{longer} of {len(part.store)} examples ({share})" in record.getMessage()
  assert f"were truncated ({part.units.tokens_lost} target tokens lost)" in record.getMessage()
  # Rows long enough for every example: nothing to say.
  caplog.clear()
  roomy = _config({**OVERRIDES, "data.pack": False, "data.seq_len": 4096,
                   "model.max_seq_len": 4096})
  with caplog.at_level(logging.WARNING):
    _source(roomy, vocab).warn_overlong()
  assert not [r for r in caplog.records if "longer than a row" in r.getMessage()]


@pytest.fixture(scope="module")
def epochs_run(tmp_path_factory, vocab):
  """One uninterrupted CLI run with --config.train.epochs, and the steps it should derive."""
  workdir = tmp_path_factory.mktemp("epochs")
  result = _run_cli(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  source = _source(_config(), vocab)
  steps = trainer.epoch_steps(EPOCHS, source.rows_per_epoch, _config().data.global_batch_size)
  return workdir, result, steps


def test_cli_trains_the_derived_steps_and_records_them(epochs_run):
  workdir, result, steps = epochs_run
  assert 2 < steps < test_tiny.get_config().train.steps
  assert [r["step"] for r in metrics.read_metrics(workdir)] == list(range(1, steps + 1))
  recorded = checkpointing.load_config(str(workdir))
  assert (recorded.train.steps, recorded.train.epochs) == (steps, EPOCHS)
  assert f"-> train.steps={steps}" in result.stderr
  # The truncation warning (seq_len 128 truncates most examples): once per run.
  assert sum("longer than a row" in line for line in result.stderr.splitlines()) == 1
  # The schedule's length is the derived steps.
  schedule = optimizer.learning_rate_schedule(recorded.optimizer, steps)
  np.testing.assert_allclose([r["learning_rate"] for r in metrics.read_metrics(workdir)],
                             [schedule(s) for s in range(steps)], rtol=1e-6)


def test_a_rerun_of_a_finished_epochs_run_says_it_is_already_trained(epochs_run):
  workdir, _, steps = epochs_run
  before = (workdir / "metrics.jsonl").read_text()
  result = _run_cli(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"already trained to step {steps} (train.steps = {steps}); raise train.epochs" in (
      result.stderr)
  assert (workdir / "metrics.jsonl").read_text() == before


def test_an_interrupted_epochs_run_resumes_exactly(epochs_run, tmp_path, monkeypatch):
  make = input_pipeline.make_train_iterator
  monkeypatch.setattr(input_pipeline, "make_train_iterator",
                      lambda *a, **k: test_train._SigtermAt(make(*a, **k), 2))
  with pytest.raises(trainer.Preempted, match="step 2"):
    trainer.train_and_evaluate(_config(), str(tmp_path))
  monkeypatch.undo()
  result = _run_cli(tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from step 2" in result.stderr
  assert test_train._exact(metrics.read_metrics(tmp_path)) == test_train._exact(metrics.read_metrics(epochs_run[0]))


@pytest.mark.parametrize("args, message", [
    (["--config.train.steps=5"], "--config.train.steps cannot be given with train.epochs=0.02"),
    (["--config.train.epochs=-1"], "train.epochs must be >= 0"),
])
def test_steps_with_epochs_and_negative_epochs_are_one_line_errors(tmp_path, args, message):
  result = _run_cli(tmp_path, OVERRIDES, *args)
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
  assert "Traceback" not in result.stderr and not (tmp_path / "checkpoints").exists()


@pytest.fixture(scope="module")
def five_to_one_data(tmp_path_factory):
  """data_gen on a sample of the default instruction pairs: 5 LintSeq sequences per program
  and one baseline example."""
  from data_gen import pipeline
  out = tmp_path_factory.mktemp("recipe_data")
  pipeline.run(output_dir=str(out), variants=("lintseq", "baseline"), num_samples=5,
               max_programs=40)
  return str(out)


def test_the_paper_configs_express_its_recipe():
  for module, task, epochs in ((tinycodelm_150m_lintseq, "editseq_lintseq_instruct", 2.0),
                               (tinycodelm_150m_baseline, "editseq_baseline_instruct", 10.0)):
    config = module.get_config()
    assert (config.data.task, config.train.epochs) == (task, epochs)
    assert (config.data.seq_len, config.data.global_batch_size, config.data.pack) == (
        1024, 512, False)
    opt = config.optimizer
    assert (opt.learning_rate, opt.schedule, opt.warmup_steps, opt.warmup_ratio) == (
        3e-4, "linear", -1, 0.001)
    assert (opt.b1, opt.b2, opt.weight_decay) == (0.9, 0.999, 0.01)
    assert (config.train.compute_dtype, config.train.loss_reduction) == ("bfloat16", "sum")
    assert config.model.num_layers == 12 and config.model.vocab_size == 50304


@pytest.mark.parametrize("batch", [512, 8])
def test_both_arms_take_the_same_number_of_steps(five_to_one_data, vocab, batch):
  """2 epochs over 5 sequences per program and 10 epochs over one example per program: as
  many optimizer steps, at the paper's batch of 512 and at one that makes them many."""
  steps = {}
  for module in (tinycodelm_150m_lintseq, tinycodelm_150m_baseline):
    config = module.get_config()
    config.model.vocab_size = 8192  # the default tokenizer's
    config.data.data_dir, config.data.global_batch_size = five_to_one_data, batch
    config.train.eval_every = 0
    source = _source(config, vocab)
    steps[config.data.task] = (source.rows_per_epoch,
                               trainer.with_epoch_steps(config, source).train.steps)
  (lintseq_rows, lintseq_steps), (baseline_rows, baseline_steps) = steps.values()
  assert lintseq_rows == 5 * baseline_rows > 20
  assert lintseq_steps == baseline_steps == -(-10 * baseline_rows // batch)
