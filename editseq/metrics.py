"""Training metrics: `WORKDIR/metrics.jsonl`, TensorBoard (`WORKDIR/tensorboard`) and a progress bar.

Only process 0 writes. On resume the JSONL file is cut back to the resumed step, so that a
killed-and-resumed run leaves the same file as an uninterrupted one.
"""
import json
import math
import os
import sys
import time
from collections.abc import Mapping

import tqdm

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(workdir: str) -> list[dict]:
  """All records of `WORKDIR/metrics.jsonl`, in order."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _json_number(value: float) -> float | None:
  """JSON has no NaN/inf: write them as null so every line stays valid JSON."""
  return value if math.isfinite(value) else None


class MetricsLogger:
  """Writes one record per logged step to JSONL and TensorBoard, and drives the progress bar."""

  def __init__(self, workdir: str, *, start_step: int, total_steps: int, enabled: bool):
    self._enabled = enabled
    if not enabled:
      return
    records = [r for r in read_metrics(workdir) if r["step"] <= start_step]
    self._jsonl = open(os.path.join(workdir, METRICS_FILE), "w")
    for record in records:
      self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    from clu import metric_writers  # Loads TensorFlow: only when a run actually logs.
    self._writer = metric_writers.AsyncWriter(
        metric_writers.SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR)))
    self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step",
                          dynamic_ncols=True, mininterval=1.0, smoothing=0.1)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    record = {"step": step, **{k: _json_number(float(v)) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    self._writer.write_scalars(step, {k: float(v) for k, v in scalars.items()})

  def advance(self, step: int, loss: float) -> None:
    """Moves the bar to `step` (ETA comes from tqdm's smoothed rate)."""
    if not self._enabled:
      return
    self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    self._bar.update(step - self._bar.n)

  def message(self, text: str) -> None:
    """Prints a line above the bar."""
    if self._enabled:
      self._bar.write(text, file=sys.stderr)

  def close(self) -> None:
    if not self._enabled:
      return
    self._bar.close()
    self._writer.close()
    self._jsonl.close()


class Throughput:
  """Tokens/s over the steps since the last report, excluding time spent outside training.

  `pause()`/`resume()` bracket host work that is not a train step (eval, checkpoint saves); a
  report made while paused ends its window at the pause.
  """

  def __init__(self, tokens_per_step: int):
    self._tokens_per_step = tokens_per_step
    self._window_start = time.perf_counter()
    self._excluded = 0.0
    self._steps = 0
    self._paused_at: float | None = None

  def step_done(self) -> None:
    self._steps += 1

  def pause(self) -> None:
    self._paused_at = time.perf_counter()

  def resume(self) -> None:
    self._excluded += time.perf_counter() - self._paused_at
    self._paused_at = None

  def report(self) -> tuple[float, float]:
    """Returns (seconds per step, tokens per second) over the window, then starts a new one."""
    end = self._paused_at if self._paused_at is not None else time.perf_counter()
    elapsed = max(end - self._window_start - self._excluded, 1e-9)
    steps = max(self._steps, 1)
    self._window_start, self._excluded, self._steps = end, 0.0, 0
    return elapsed / steps, steps * self._tokens_per_step / elapsed
