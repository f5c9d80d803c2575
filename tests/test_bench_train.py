"""The training benchmark: batch format, same-shape PyTorch model, figures, and bad input."""
import subprocess
import sys

import numpy as np
import pytest

from configs import test_tiny
from editseq.perf import bench_train
from tests.conftest import REPO_ROOT


def test_synthetic_batch_matches_input_pipeline_format():
  batch = bench_train.synthetic_batch(3, 16, 100)
  assert set(batch) == set(bench_train.trainer.BATCH_KEYS)
  for value in batch.values():
    assert value.shape == (3, 16) and value.dtype == np.int32
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  assert batch["inputs"].min() >= 0 and batch["inputs"].max() < 100
  np.testing.assert_array_equal(batch["positions"][2], np.arange(16))
  assert batch["loss_mask"].all() and (batch["segment_ids"] == 1).all()


@pytest.mark.slow
def test_benchmark_times_both_frameworks_on_the_same_shape():
  config = test_tiny.get_config()
  record = bench_train.benchmark(config, rounds=1, steps=1, use_torch=True, torch_threads=1,
                                 matmul_n=64, log=lambda _: None)
  cfg = config.model
  # Llama differs only by its RMSNorm scales: two per layer and a final one, d_model each.
  assert record["torch_params"] - record["jax_params"] == (2 * cfg.num_layers + 1) * cfg.d_model
  for key in ("jax", "torch"):
    assert record[f"{key}_tokens_per_s"] > 0
    assert 0 < record[f"{key}_mfu"] < 1
    assert np.isfinite(record[f"{key}_final_loss"])
  assert record["ratio_jax_over_torch"] == pytest.approx(
      record["jax_tokens_per_s"] / record["torch_tokens_per_s"])


def test_bad_config_is_one_line_error(capsys, monkeypatch):
  config = test_tiny.get_config()
  config.model.num_heads = 5
  flag_values = bench_train.flags.FLAGS
  if not flag_values.is_parsed():
    flag_values(["bench_train"])
  monkeypatch.setattr(flag_values["config"], "value", config)
  with pytest.raises(SystemExit) as exit_info:
    bench_train.main(["bench_train"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == (
      "error: config.model: ModelConfig: d_model 64 is not divisible by num_heads 5; "
      "set head_dim\n")


@pytest.mark.slow
def test_bad_override_is_one_line_error_from_the_command_line():
  result = subprocess.run(
      [sys.executable, "-m", "editseq.perf.bench_train", "--config=configs/test_tiny.py",
       "--config.bogus=1"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
  assert result.returncode == 2
  assert "error: unknown config key 'bogus'" in result.stderr
  assert "Traceback" not in result.stderr


def test_profile_dir_traces_the_step_and_records_its_ops(tmp_path):
  lines = []
  record = bench_train.benchmark(test_tiny.get_config(), rounds=1, steps=1, use_torch=False,
                                 torch_threads=1, matmul_n=64, profile_dir=str(tmp_path),
                                 profile_steps=2, log=lines.append)
  assert list(tmp_path.rglob("*.trace.json.gz"))
  assert record["profile_steps"] == 2 and record["profile_dir"] == str(tmp_path)
  assert 0 < record["profile_busy_s_per_step"] <= record["profile_span_s_per_step"]
  assert 0 < len(record["profile_top_ops_s_per_step"]) <= 15
  assert any(line.startswith("ops from /host:CPU") for line in lines)
  # Memory: fp32 parameters and AdamW's two moments (plus its step counters), resident peak.
  assert 12 * record["jax_params"] <= record["jax_state_bytes"] <= 12 * record["jax_params"] + 64
  assert record["jax_peak_rss_bytes"] >= record["jax_rss_before_bytes"] > 0
  assert record["jax_peak_rss_over_state"] == pytest.approx(
      record["jax_peak_rss_bytes"] / record["jax_state_bytes"])
  assert 0 < record["jax_xla_temp_bytes"] < record["jax_xla_step_bytes"]
  assert any("peak resident memory" in line for line in lines)


def test_peak_rss_follows_an_allocation_and_restarts_on_reset():
  size = 256 * 2**20
  before = bench_train.reset_peak_rss()
  block = np.ones(size, np.uint8)  # touched, so resident
  assert bench_train.peak_rss_bytes() >= before + size * 0.9
  del block
  after = bench_train.reset_peak_rss()
  assert after < before + size * 0.5
  assert bench_train.peak_rss_bytes() < before + size * 0.5


def test_a_trace_that_cannot_be_summarised_keeps_the_benchmark(tmp_path, monkeypatch):
  def unreadable(path):
    raise bench_train.profile_summary.TraceError(f"{path}: no op events")
  monkeypatch.setattr(bench_train.profile_summary, "op_times", unreadable)
  lines = []
  record = bench_train.benchmark(test_tiny.get_config(), rounds=1, steps=1, use_torch=False,
                                 torch_threads=1, matmul_n=64, profile_dir=str(tmp_path),
                                 log=lines.append)
  assert record["profile_dir"] == str(tmp_path) and "profile_busy_s_per_step" not in record
  assert record["jax_tokens_per_s"] > 0
  assert any("not summarised" in line for line in lines)
