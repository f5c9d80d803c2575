"""Metrics files and the throughput window, with a fake clock and device (no timing assertions)."""
import collections
import json
import threading
import time

import pytest

from editseq import metrics


class _Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


class _Device:
  """Fake step outputs: a step is finished when the test says so, at the time it chooses."""

  def __init__(self, clock):
    self._clock = clock
    self._finished = collections.defaultdict(threading.Event)

  def wait(self, step):
    assert self._finished[step].wait(60), f"step {step} never finished"

  def finish(self, meter, step, at):
    """Finishes `step` at time `at` and waits until the meter's watcher has seen it."""
    self._clock.now = at
    seen = meter.completed
    self._finished[step].set()
    deadline = time.monotonic() + 60
    while meter.completed == seen and time.monotonic() < deadline:
      time.sleep(0.001)
    assert meter.completed == seen + 1


@pytest.fixture
def meter():
  clock = _Clock()
  device = _Device(clock)
  meter = metrics.Throughput(tokens_per_step=1000, clock=clock, wait=device.wait)
  yield meter, device, clock
  meter.close()


def test_throughput_is_timed_between_device_completions_whatever_the_host_does(meter):
  """The host falls behind: steps finish long before it reports them, and a step finishes
  before the host pauses for eval. Windows still span completion to completion; the pause
  (from the last completion to the resume) is left out."""
  meter, device, clock = meter
  meter.dispatched(1, 1)
  meter.dispatched(2, 2)
  device.finish(meter, 1, at=102.0)
  device.finish(meter, 2, at=104.0)
  clock.now = 109.0  # the host gets to step 1 only now
  assert meter.report(1) == (2.0, 500.0)
  meter.dispatched(3, 3)
  device.finish(meter, 3, at=109.5)
  clock.now = 120.0
  assert meter.report(2) == (2.0, 500.0)  # from step 1's completion to step 2's
  meter.pause()  # all done: eval or a save from here
  clock.now = 150.0
  assert meter.report(3) == (5.5, 1000 / 5.5)  # timed by the host, it would last no time
  meter.resume()
  meter.dispatched(4, 4)
  meter.dispatched(5, 5)
  device.finish(meter, 4, at=154.0)
  device.finish(meter, 5, at=155.0)
  clock.now = 200.0
  assert meter.report(5) == (2.5, 400.0)  # two steps in one window


def _steps_noted_late(min_window_s: float) -> list[float]:
  """tokens/s reported after each of 30 steps of 0.1 s (10,000 tokens/s) whose completions
  the watcher notes 0.09 s late every third step, as a loaded host does."""
  clock = _Clock()
  device = _Device(clock)
  meter = metrics.Throughput(tokens_per_step=1000, clock=clock, wait=device.wait,
                             min_window_s=min_window_s)
  rates = []
  try:
    for step in range(1, 31):
      meter.dispatched(step, step)
      device.finish(meter, step, at=100.0 + 0.1 * step + (0.09 if step % 3 == 0 else 0.0))
      rates.append(meter.report(step)[1])
  finally:
    meter.close()
  return rates


def test_completions_noted_late_cannot_make_a_window_faster_than_the_device():
  true_rate, lateness, window = 10_000.0, 0.09, 1.0
  per_step = _steps_noted_late(min_window_s=0.0)
  assert max(per_step) > 9 * true_rate  # a step right after a late note: 0.01 s for 0.1 s
  rates = _steps_noted_late(min_window_s=window)
  assert max(rates) <= true_rate * window / (window - lateness) + 1e-6
  # Once a window spans min_window_s, a late note moves it by lateness / window at most.
  assert all(true_rate * (1 - lateness / window) - 1e-6 <= r for r in rates[10:])


def test_pause_waits_for_the_dispatched_steps(meter):
  meter, device, clock = meter
  meter.dispatched(1, 1)
  paused = threading.Event()
  waiter = threading.Thread(target=lambda: (meter.pause(), paused.set()))
  waiter.start()
  assert not paused.wait(0.2)
  device.finish(meter, 1, at=101.0)
  waiter.join(60)
  assert paused.is_set()
  assert meter.report(1) == (1.0, 1000.0)


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
