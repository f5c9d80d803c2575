"""End to end: `python -m editseq.train` on configs/test_tiny.py and the embedded default data.

A run stopped by SIGTERM (or killed outright) and resumed by rerunning the same command logs
bitwise the same losses, gradient norms and eval losses as an uninterrupted run.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import test_tiny
from editseq import checkpointing
from editseq import config_validation
from editseq import metrics
from editseq import trainer
from tests.conftest import REPO_ROOT
from tests.test_checkpointing import truncate_largest_file

# 12 steps with checkpoints every 4 and evals every 6: small enough for the fast tier.
OVERRIDES = {"train.steps": 12, "train.checkpoint_every": 4, "train.eval_every": 6}
EXACT_KEYS = ("loss", "grad_norm", "learning_rate", "loss_tokens", "eval_loss")


def _command(workdir, overrides=OVERRIDES):
  return [sys.executable, "-m", "editseq.train", "--config=configs/test_tiny.py",
          f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in overrides.items())]


def _run_cli(workdir, overrides=OVERRIDES, timeout=600):
  return subprocess.run(_command(workdir, overrides), cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=timeout)


def _config(overrides=OVERRIDES):
  config = test_tiny.get_config()
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def _exact(records):
  return [{k: r[k] for k in ("step", *EXACT_KEYS) if k in r} for r in records]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The reference: one uninterrupted CLI run."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  result = _run_cli(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result


def test_cli_trains_with_falling_loss_and_writes_its_outputs(uninterrupted):
  workdir, result = uninterrupted
  records = metrics.read_metrics(workdir)
  assert [r["step"] for r in records] == list(range(1, 13))
  losses = [r["loss"] for r in records]
  assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
  evals = [r["eval_loss"] for r in records if "eval_loss" in r]
  assert len(evals) == 2 and evals[1] < evals[0]
  for record in records:
    assert record["tokens_per_s"] > 0 and 0 < record["mfu"] < 1
  # The config as run: the model's "auto" choices made for this CPU.
  assert checkpointing.load_config(workdir).to_dict() == config_validation.for_device(
      _config()).to_dict()
  assert sorted(os.listdir(workdir / "checkpoints")) == ["12", "8"]  # keep_checkpoints = 2
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
  assert "attention xla, layers scanned, remat none; batch 8 x 128 in 1 microbatch" in result.stderr
  assert "Traceback" not in result.stderr


def test_throughput_and_mfu_stay_true_when_the_host_falls_behind(tmp_path, monkeypatch):
  """Each step takes at least DEVICE_S on the device (a host callback sleeps inside it), and the
  host falls behind: after dispatching a step it waits for it to finish, then dawdles HOST_S.
  So every step has finished before the host reports the one before it, also right before a
  save or an eval. No logged step may then look faster than the device can run it (timed
  between host events, such a step lasted no time: MFU 21 on the tiny config)."""
  import jax
  device_s, host_s = 0.1, 0.3
  step_fn = trainer.TrainProgram._train_step  # pylint: disable=protected-access
  compile_step = trainer.TrainProgram.compile_train_step

  def slow_device_step(self, state, batch):
    new_state, step_metrics = step_fn(self, state, batch)
    jax.debug.callback(lambda loss: time.sleep(device_s), step_metrics["loss"])
    return new_state, step_metrics

  def host_behind(self):
    compiled = compile_step(self)

    def train_step(state, batch):
      outputs = compiled(state, batch)
      jax.block_until_ready(outputs)
      time.sleep(host_s)
      return outputs
    return train_step

  monkeypatch.setattr(trainer.TrainProgram, "_train_step", slow_device_step)
  monkeypatch.setattr(trainer.TrainProgram, "compile_train_step", host_behind)
  config = _config({"train.steps": 6, "train.checkpoint_every": 2, "train.eval_every": 3})
  started = time.perf_counter()
  trainer.train_and_evaluate(config, str(tmp_path))
  wall = time.perf_counter() - started
  records = metrics.read_metrics(tmp_path)
  assert [r["step"] for r in records] == list(range(1, 7))
  tokens_per_step = config.data.global_batch_size * config.data.seq_len
  for record in records:
    # A window spans at least its step's device time, less how late the step before it was
    # seen finished (a thread waits for nothing else; half of DEVICE_S is the margin).
    assert record["seconds_per_step"] >= device_s / 2, records
    assert record["tokens_per_s"] <= tokens_per_step / (device_s / 2), records
    assert 0 < record["mfu"] <= 1, records
  # The windows are disjoint pieces of the run.
  assert sum(r["seconds_per_step"] for r in records) <= wall


class _SigtermAt:
  """Wraps the train iterator: sends this process SIGTERM while fetching batch `n`."""

  def __init__(self, iterator, n):
    self._iterator, self._n, self._fetched = iterator, n, 0

  def __iter__(self):
    return self

  def __next__(self):
    self._fetched += 1
    if self._fetched == self._n:
      os.kill(os.getpid(), signal.SIGTERM)
    return next(self._iterator)

  def get_state(self):
    return self._iterator.get_state()

  def set_state(self, state):
    self._iterator.set_state(state)

  def close(self):
    self._iterator.close()


def test_sigterm_saves_and_rerunning_the_command_resumes_exactly(uninterrupted, tmp_path,
                                                                 monkeypatch):
  from editseq import input_pipeline
  make = input_pipeline.make_train_iterator
  monkeypatch.setattr(input_pipeline, "make_train_iterator",
                      lambda *a, **k: _SigtermAt(make(*a, **k), 6))
  with pytest.raises(trainer.Preempted, match="step 6"):
    trainer.train_and_evaluate(_config(), str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "6"]
  assert [r["step"] for r in metrics.read_metrics(tmp_path)] == list(range(1, 7))
  monkeypatch.undo()

  result = _run_cli(tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from step 6" in result.stderr
  assert _exact(metrics.read_metrics(tmp_path)) == _exact(metrics.read_metrics(uninterrupted[0]))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
  config = _config({"train.steps": 6, "train.checkpoint_every": 1, "train.eval_every": 0,
                    "train.keep_checkpoints": 10, "optimizer.learning_rate": 1e30,
                    "optimizer.warmup_steps": 0})
  with pytest.raises(trainer.TrainingDiverged) as error:
    trainer.train_and_evaluate(config, str(tmp_path))
  records = metrics.read_metrics(tmp_path)
  bad = records[-1]["step"]
  assert records[-1]["loss"] is None or records[-1]["grad_norm"] is None
  saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))
  assert saved == list(range(1, bad))
  assert f"at step {bad}" in str(error.value)
  assert f"last good checkpoint is step {bad - 1}" in str(error.value)


@pytest.mark.parametrize("args,message", [
    (["--config.train.stpes=3"], "stpes"),
    (["--config.mesh.data=3"], "mesh"),
    (["--config.data.global_batch_size=12"], "global_batch_size 12"),
    (["--config=configs/missing.py"], "missing.py"),
    (["--config.model.attention_impl=splash"], "attention_impl=splash does not run on cpu"),
])
def test_bad_config_is_one_line_and_exit_2(tmp_path, args, message):
  command = [*_command(tmp_path, {}), *args]
  result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "checkpoints").exists()


def test_a_resumed_run_keeps_the_way_it_ran(tmp_path):
  """The device choices recorded in config.json outlast a rerun with "auto" (e.g. a run started
  with unrolled layers, or before cuDNN attention was the GPU default, goes on as it began)."""
  short = {"train.steps": 2, "train.eval_every": 0, "train.checkpoint_every": 2}
  trainer.train_and_evaluate(_config(short), str(tmp_path))
  recorded = checkpointing.load_config(str(tmp_path))
  assert recorded.model.scan_layers is True  # this CPU's choice
  recorded.model.scan_layers = False
  checkpointing.save_config(str(tmp_path), recorded)
  trainer.train_and_evaluate(_config({**short, "train.steps": 4}), str(tmp_path))
  assert checkpointing.load_config(str(tmp_path)).model.scan_layers is False
  assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_a_run_packed_for_cudnn_resumes_on_a_device_without_it(tmp_path):
  """A run begun on GPUs under cuDNN attention (rows of at most model.max_segments examples)
  resumes here, under XLA attention, with the same packing (the iterator state would otherwise
  be refused). The GPU run is made by recording what it would have: its packing here is the
  cap it had there."""
  short = {"train.steps": 2, "train.eval_every": 0, "train.checkpoint_every": 2}
  trainer.train_and_evaluate(_config({**short, "data.max_segments_per_row": 2}), str(tmp_path))
  recorded = checkpointing.load_config(str(tmp_path))
  recorded.model.attention_impl, recorded.model.max_segments = "cudnn", 2
  recorded.data.max_segments_per_row = None
  checkpointing.save_config(str(tmp_path), recorded)
  trainer.train_and_evaluate(_config({**short, "train.steps": 4}), str(tmp_path))
  resumed = checkpointing.load_config(str(tmp_path))
  assert (resumed.model.attention_impl, resumed.data.max_segments_per_row) == ("xla", 2)
  assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_resuming_with_other_data_is_refused(uninterrupted):
  workdir = uninterrupted[0]
  before = (workdir / "metrics.jsonl").read_text()
  result = _run_cli(workdir, {**OVERRIDES, "data.seed": 1})
  assert result.returncode == 2, result.stderr[-3000:]
  assert f"error: cannot resume {workdir}: iterator state does not match" in result.stderr
  assert (workdir / "metrics.jsonl").read_text() == before


def _messages(stderr: str) -> list[str]:
  """stderr's lines without progress-bar redraws or the input pipeline's truncation warning
  (test_tiny's rows of 128 tokens cut most LintSeq examples; test_recipe checks that line)."""
  lines = [line.strip() for line in re.split(r"[\r\n]", stderr)]
  return [line for line in lines if line and not re.match(r"\d+%\|", line)
          and not re.search(r"input_pipeline\.py:\d+\] .* were truncated", line)]


def test_a_corrupt_newest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_one_before(
    uninterrupted, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted[0], workdir)
  truncated = truncate_largest_file(workdir / "checkpoints" / "12")
  result = _run_cli(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  # Nothing but the one warning and the usual messages between the progress bar's redraws.
  messages = _messages(result.stderr)
  assert len(messages) == 3, result.stderr[-3000:]
  warning, resumed, parameters = messages
  assert warning.startswith("warning: checkpoint step 12 does not restore"), warning
  assert "resuming from step 8" in warning
  assert resumed == f"resumed from step 8 ({workdir})" and " parameters on " in parameters
  assert _exact(metrics.read_metrics(workdir)) == _exact(metrics.read_metrics(uninterrupted[0]))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["12", "8"]
  kept = workdir / checkpointing.UNRESTORABLE_DIR / "12"
  assert (kept / truncated).exists() and str(kept) in warning


def test_no_restorable_checkpoint_is_one_line_and_exit_2(uninterrupted, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted[0], workdir)
  for step in ("8", "12"):
    truncate_largest_file(workdir / "checkpoints" / step)
  before = (workdir / "metrics.jsonl").read_text()
  result = _run_cli(workdir)
  assert result.returncode == 2, result.stderr[-3000:]
  assert len(_messages(result.stderr)) == 1, result.stderr[-3000:]  # nothing else is printed
  error = _messages(result.stderr)[0]
  assert error.startswith(f"error: cannot resume {workdir}: no checkpoint in"), result.stderr[-3000:]
  assert "steps 12, 8" in error
  assert sorted(os.listdir(workdir / "checkpoints")) == ["12", "8"]
  assert not (workdir / checkpointing.UNRESTORABLE_DIR).exists()
  assert (workdir / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_sigkill_at_any_moment_then_rerun_resumes_exactly(uninterrupted, tmp_path):
  """A run killed outright (possibly mid-save) loses at most the steps since its last checkpoint."""
  reference = _exact(metrics.read_metrics(uninterrupted[0]))
  process = subprocess.Popen(_command(tmp_path), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 600
  while time.monotonic() < deadline and process.poll() is None:
    if len(metrics.read_metrics(tmp_path)) >= 5:
      break
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert len(metrics.read_metrics(tmp_path)) < 12
  result = _run_cli(tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert _exact(metrics.read_metrics(tmp_path)) == reference


def _launch_two_processes(workdir, overrides=OVERRIDES):
  """Multi-host on one machine: 2 processes x 4 CPU devices (gloo collectives), one workdir."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
  return [subprocess.Popen([*_command(workdir, overrides), f"--coordinator_address=localhost:{port}",
                            "--num_processes=2", f"--process_id={i}"], cwd=REPO_ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
          for i in range(2)]


@pytest.mark.slow
def test_two_processes_train_like_one(uninterrupted, tmp_path):
  for process in _launch_two_processes(tmp_path):
    _, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
  got, want = metrics.read_metrics(tmp_path), metrics.read_metrics(uninterrupted[0])
  assert [r["step"] for r in got] == [r["step"] for r in want]
  for key in EXACT_KEYS:
    np.testing.assert_allclose([r.get(key, 0.0) for r in got], [r.get(key, 0.0) for r in want],
                               rtol=1e-5, err_msg=key)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["12", "8"]


@pytest.mark.slow
def test_sigterm_to_one_host_stops_every_host_at_the_same_step(tmp_path):
  """JAX's preemption sync points: both processes save the same step and exit 143."""
  processes = _launch_two_processes(tmp_path, {**OVERRIDES, "train.steps": 1000})
  deadline = time.monotonic() + 600
  while time.monotonic() < deadline and len(metrics.read_metrics(tmp_path)) < 5:
    time.sleep(0.2)
  processes[1].send_signal(signal.SIGTERM)
  for process in processes:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 143, stderr[-3000:]
  steps = [r["step"] for r in metrics.read_metrics(tmp_path)]
  assert 5 <= steps[-1] < 1000
  assert str(steps[-1]) in os.listdir(tmp_path / "checkpoints")


@pytest.mark.slow
def test_finetune_from_a_checkpoint_starts_from_its_parameters(uninterrupted, tmp_path):
  overrides = {**OVERRIDES, "train.steps": 2, "train.eval_every": 0,
               "train.init_from": str(uninterrupted[0])}
  result = _run_cli(tmp_path, overrides)
  assert result.returncode == 0, result.stderr[-3000:]
  first = metrics.read_metrics(tmp_path)[0]
  pretrained_losses = [r["loss"] for r in metrics.read_metrics(uninterrupted[0])]
  assert first["loss"] < pretrained_losses[0] - 1.0


@pytest.mark.slow
def test_150m_config_starts_training_on_cpu(tmp_path):
  """As a user runs it: one CPU device (8 simulated devices would hold 8 replicas of the state)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  command = [sys.executable, "-m", "editseq.train", "--config=configs/tinycodelm_150m.py",
             f"--workdir={tmp_path}", "--config.train.steps=2", "--config.data.global_batch_size=8",
             "--config.data.seq_len=256", "--config.train.eval_every=0",
             "--config.data.data_dir=default:small"]
  result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800,
                          env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  records = metrics.read_metrics(tmp_path)
  assert [r["step"] for r in records] == [1, 2]
  assert all(r["loss"] is not None and 9 < r["loss"] < 12 for r in records)
  assert json.loads((tmp_path / "config.json").read_text())["model"]["num_layers"] == 12
