"""One progress bar for work done in several worker processes.

Beam's multi-processing runner gives each worker process its own copy of a DoFn, so a bar drawn
by the DoFn was drawn once per worker, each over the other on the same terminal line with its
own share of the count. Here the workers only count: `Ticker.tick` appends one byte to a file,
and `SharedProgress`, in the process that launched the pipeline, draws that file's size as the
one bar. A worker on another machine (a remote runner) finds no such file and counts nothing.
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading

import tqdm


class Ticker:
  """What a worker holds (pickled into it): appends a byte to the count file per tick."""

  def __init__(self, path: str):
    self.path = path
    self._fd: int | None = None

  def __getstate__(self):
    return {"path": self.path}

  def __setstate__(self, state):
    self.path, self._fd = state["path"], None

  def tick(self) -> None:
    if self._fd is None:
      try:  # no O_CREAT: elsewhere than the launching machine there is nothing to count into
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
      except OSError:
        self._fd = -1
    if self._fd >= 0:
      os.write(self._fd, b"\0")  # one O_APPEND write: atomic, whichever process makes it

  def close(self) -> None:
    if self._fd is not None and self._fd >= 0:
      os.close(self._fd)
    self._fd = None


class SharedProgress:
  """Context manager: a tqdm bar on stderr that shows the ticks of every worker's `ticker`."""

  def __init__(self, desc: str, unit: str, interval_s: float = 0.2):
    self.desc, self.unit, self.interval_s = desc, unit, interval_s
    fd, path = tempfile.mkstemp(prefix="editseq-progress-")
    os.close(fd)
    self.ticker = Ticker(path)
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._bar: tqdm.tqdm | None = None

  def _count(self) -> int:
    try:
      return os.path.getsize(self.ticker.path)
    except OSError:
      return 0

  def _draw(self) -> None:
    self._bar.update(self._count() - self._bar.n)

  def _poll(self) -> None:
    while not self._stop.wait(self.interval_s):
      self._draw()

  def __enter__(self) -> SharedProgress:
    self._bar = tqdm.tqdm(desc=self.desc, unit=self.unit, file=sys.stderr)
    self._thread = threading.Thread(target=self._poll, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    self._thread.join()
    self._draw()
    self._bar.close()
    os.remove(self.ticker.path)
