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
  """Seconds per step and tokens/s, timed from the device's completion of one step to its
  completion of the next, over windows of at least `min_window_s`.

  A thread that does nothing but wait for each dispatched step's outputs (`dispatched`) notes
  when each one finishes; the host loop's own work (fetching metrics, writing records, the
  progress bar, a slow input pipeline) cannot move those moments. A step starts only after the
  previous one ended, so every step of a window ran inside it. Timing the host's calls instead
  does not have that property: when the host falls behind, a step can finish before the host
  starts its window, which then lasts no time.

  The watcher notes a completion late when the machine does not schedule it at once (a loaded
  host; a busy interpreter). A late note lengthens one step's interval and shortens the next
  one's by as much, so over a window the error is that lateness divided by the window's length:
  a window of one short step could read many times the hardware's peak, one of `min_window_s`
  cannot be off by more than lateness / min_window_s. A report that covers less time reaches
  back over steps reported before; the clock's start (or `resume`) bounds every window, so the
  first ones after it are timed from there. Host stalls that leave the device waiting stay in
  the windows (they are lost throughput), except from `pause()` (once every dispatched step
  finished) to `resume()`: eval and saves.
  """

  def __init__(self, tokens_per_step: int, *, clock: Callable[[], float] = time.perf_counter,
               wait: Callable[[Any], Any] | None = None, min_window_s: float = 1.0):
    self._tokens_per_step = tokens_per_step
    self._clock = clock
    self._wait = wait or _block_until_ready
    self._min_window_s = min_window_s
    self._changed = threading.Condition()
    self._start = clock()  # no window reaches back past this moment
    self._dispatched: list[int] = []  # steps handed to the watcher, in order
    self._tokens: dict[int, int] = {}  # dispatched, not yet finished: step -> tokens
    self._done: list[tuple[int, float, int]] = []  # (step, finished at, tokens) since _start
    self._reported = 0  # how many of _done were reported
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
        self._done.append((step, now, self._tokens.pop(step)))
        self._dispatched.remove(step)
        self._changed.notify_all()

  @property
  def completed(self) -> int:
    """Steps seen finished and not yet reported."""
    with self._changed:
      return len(self._done) - self._reported

  def pause(self) -> None:
    """Stops the clock once every dispatched step has finished (call before eval or a save)."""
    with self._changed:
      self._changed.wait_for(lambda: not self._dispatched)

  def resume(self) -> None:
    """Restarts the clock: the next step's interval starts now, and no window reaches back
    past it."""
    with self._changed:
      self._start = self._clock()
      self._done, self._reported = self._done[self._reported:], 0

  def report(self, step: int) -> tuple[float, float]:
    """(seconds per step, tokens per second) up to `step` (waiting until it is seen finished):
    over the steps not reported before, and as many earlier ones as it takes to span
    `min_window_s`."""
    with self._changed:
      self._changed.wait_for(lambda: any(s == step for s, _, _ in self._done[self._reported:]))
      last = max(i for i, (s, _, _) in enumerate(self._done) if s <= step)
      end = self._done[last][1]
      first = self._reported
      while first > 0 and end - self._done[first - 1][1] < self._min_window_s:
        first -= 1
      begin = self._done[first - 1][1] if first > 0 else self._start
      window = self._done[first:last + 1]
      # A later window reaches back no further than this one's begin: it becomes the start.
      self._start = begin
      self._done, self._reported = self._done[first:], last + 1 - first
    elapsed = max(end - begin, 1e-9)
    return elapsed / len(window), sum(t for _, _, t in window) / elapsed

  def close(self) -> None:
    """Stops the watcher thread (after the steps it is waiting for)."""
    self._queue.put(None)
    self._watcher.join()


def _block_until_ready(outputs: Any) -> None:
  import jax  # pylint: disable=g-import-not-at-top  # metrics files need no JAX
  jax.block_until_ready(outputs)
