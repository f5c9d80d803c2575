"""Metrics files and the throughput window, with a fake clock (no timing assertions)."""
import json

import pytest

from editseq import metrics


class _Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


@pytest.fixture
def clock(monkeypatch):
  fake = _Clock()
  monkeypatch.setattr(metrics.time, "perf_counter", fake)
  return fake


def test_throughput_excludes_paused_time_across_windows(clock):
  meter = metrics.Throughput(tokens_per_step=1000)
  clock.now += 2.0
  meter.step_done()
  clock.now += 2.0
  meter.step_done()
  assert meter.report() == (2.0, 500.0)
  clock.now += 1.0
  meter.step_done()
  meter.pause()  # e.g. eval after this step; the report is made while paused
  clock.now += 30.0
  assert meter.report() == (1.0, 1000.0)
  clock.now += 5.0
  meter.resume()
  clock.now += 4.0
  meter.step_done()
  assert meter.report() == (4.0, 250.0)


def test_jsonl_records_are_valid_json_and_cut_back_on_resume(tmp_path):
  logger = metrics.MetricsLogger(str(tmp_path), start_step=0, total_steps=4, enabled=True)
  for step in range(1, 5):
    logger.write(step, {"loss": 1.0 / step, "mfu": float("nan") if step == 4 else 0.5})
    logger.advance(step, 1.0 / step)
  logger.close()
  lines = (tmp_path / metrics.METRICS_FILE).read_text().splitlines()
  assert json.loads(lines[-1]) == {"step": 4, "loss": 0.25, "mfu": None}

  resumed = metrics.MetricsLogger(str(tmp_path), start_step=2, total_steps=4, enabled=True)
  resumed.close()
  assert [r["step"] for r in metrics.read_metrics(str(tmp_path))] == [1, 2]
  assert list((tmp_path / metrics.TENSORBOARD_DIR).iterdir())


def test_other_processes_write_nothing(tmp_path):
  logger = metrics.MetricsLogger(str(tmp_path), start_step=0, total_steps=2, enabled=False)
  logger.write(1, {"loss": 1.0})
  logger.close()
  assert not list(tmp_path.iterdir())
