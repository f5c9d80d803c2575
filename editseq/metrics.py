"""Training metrics: `WORKDIR/metrics.jsonl`, TensorBoard (`WORKDIR/tensorboard`) and a progress bar.

Only process 0 writes. On resume the JSONL file is cut back to the resumed step, so that a
killed-and-resumed run leaves the same file as an uninterrupted one.
"""
import json
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

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
  """Seconds per step and tokens/s over windows of steps, timed from the device's completion of
  one step to its completion of the next.

  A thread that does nothing but wait for each dispatched step's outputs (`dispatched`) notes
  when each one finishes; the host loop's own work (fetching metrics, writing records, the
  progress bar, a slow input pipeline) cannot move those moments. A step starts only after the
  previous one ended, so every step of a window ran inside it and tokens/s cannot exceed what
  the device did. Timing the host's calls instead does not have that property: when the host
  falls behind, a step can finish before the host starts its window, which then lasts no time.
  Host stalls that leave the device waiting stay in the window (they are lost throughput),
  except from `pause()` (once every dispatched step finished) to `resume()`: eval and saves.
  """

  def __init__(self, tokens_per_step: int, *, clock: Callable[[], float] = time.perf_counter,
               wait: Callable[[Any], Any] | None = None):
    self._tokens_per_step = tokens_per_step
    self._clock = clock
    self._wait = wait or _block_until_ready
    self._changed = threading.Condition()
    self._mark = clock()  # where the next completed step's interval starts
    self._dispatched: list[int] = []  # steps handed to the watcher, in order
    self._intervals: dict[int, float] = {}  # completed, not yet reported: step -> seconds
    self._tokens: dict[int, int] = {}  # dispatched, not yet reported: step -> tokens
    self._queue: queue.SimpleQueue = queue.SimpleQueue()
    self._watcher = threading.Thread(target=self._watch, name="step-completion", daemon=True)
    self._watcher.start()

  def dispatched(self, step: int, outputs: Any, tokens: int | None = None) -> None:
    """Step `step` was dispatched; `outputs` (any of its output arrays) is ready when it ends.
    `tokens`: the positions it computed (default: the constructor's tokens_per_step)."""
    with self._changed:
      self._dispatched.append(step)
      self._tokens[step] = self._tokens_per_step if tokens is None else tokens
    self._queue.put((step, outputs))

  def _watch(self) -> None:
    while True:
      item = self._queue.get()
      if item is None:
        return
      step, outputs = item
      try:
        self._wait(outputs)
      except Exception:  # pylint: disable=broad-except  # the loop reports a failed step itself
        pass
      now = self._clock()
      with self._changed:
        self._intervals[step] = now - self._mark
        self._mark = now
        self._dispatched.remove(step)
        self._changed.notify_all()

  @property
  def completed(self) -> int:
    """Steps seen finished and not yet reported."""
    with self._changed:
      return len(self._intervals)

  def pause(self) -> None:
    """Stops the clock once every dispatched step has finished (call before eval or a save)."""
    with self._changed:
      self._changed.wait_for(lambda: not self._dispatched)

  def resume(self) -> None:
    """Restarts the clock: the next step's interval starts now."""
    with self._changed:
      self._mark = self._clock()

  def report(self, step: int) -> tuple[float, float]:
    """(seconds per step, tokens per second) over the steps up to `step` not reported before
    (waiting until `step` is seen finished)."""
    with self._changed:
      self._changed.wait_for(lambda: step in self._intervals)
      steps = [s for s in self._intervals if s <= step]
      elapsed = max(sum(self._intervals.pop(s) for s in steps), 1e-9)
      tokens = sum(self._tokens.pop(s) for s in steps)
    return elapsed / len(steps), tokens / elapsed

  def close(self) -> None:
    """Stops the watcher thread (after the steps it is waiting for)."""
    self._queue.put(None)
    self._watcher.join()


def _block_until_ready(outputs: Any) -> None:
  import jax  # pylint: disable=g-import-not-at-top  # metrics files need no JAX
  jax.block_until_ready(outputs)
