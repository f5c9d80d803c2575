"""Deterministic, resumable, multi-host batches for the trainer (docs/ARCHITECTURE.md section 6).

Design: a pass over a seqio task tokenizes its split once into a *token store*
(`editseq/token_store.py`: a memory-mapped file of tokens end to end, example offsets and
prompt lengths, cached under `$EDITSEQ_CACHE/tokenized/`). Everything after that is a pure
function of (seed, epoch, row) over the store, in numpy:
- epoch e draws its examples (a seeded permutation; for a mixture, each task's share of the
  epoch by its rate, cycling through that task's own seeded permutations);
- `packing.pack` lays them into rows of seq_len slots; the global row stream is epoch 0's rows,
  then epoch 1's, ...;
- global batch s is the next `global_batch_size` rows of the stream; process p builds only rows
  [p * B_local, (p + 1) * B_local) of it and reads only their tokens from the store.
The iterator state is the position in the stream, `{"epoch", "row"}` (plus a fingerprint that
must match on restore): the same on every process, independent of the process count, so
restoring any checkpoint gives exactly the batches an uninterrupted run would have seen.

Scaling: the per-process memory is the per-epoch plan (a few int64 per example) and a memmap
of the store. A host builds a store on first use, alone (deterministic bytes, so hosts with
local caches agree), or finds it in a shared `$EDITSEQ_CACHE`; for corpora of billions of
tokens, build the stores beforehand with Beam (`python -m editseq.build_token_stores`, one
worker per data file, the same bytes). The per-epoch packing plan is a Python loop of about
2 s per million examples (minutes per epoch at 72B tokens, run once per epoch).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import threading
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from editseq import default_data
from editseq import packing
from editseq import tasks
from editseq import token_store
from editseq.tasks import DataError

_STATE_VERSION = 1


# ---------------------------------------------------------------------------------------------
# What an iterator reads: stores, their units, and the per-epoch plans.

@dataclasses.dataclass(frozen=True)
class _Part:
  """One task of the (possibly one-task) mixture."""
  store: token_store.TokenStore
  units: packing.Units
  rate: float
  overlong: str  # what became of examples longer than a row (packing.OVERLONG_MODES)


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Rows of one epoch: row r holds units `units[order[row_splits[r]:row_splits[r + 1]]]`,
  where a unit is (part, unit index in that part)."""
  part: np.ndarray
  unit: np.ndarray
  row_splits: np.ndarray

  @property
  def num_rows(self) -> int:
    return len(self.row_splits) - 1


class DataSource:
  """The examples of a task or mixture as units of a given seq_len, and their epoch plans."""

  def __init__(self, parts: list[_Part], seq_len: int, *, seed: int, shuffle: bool, pack: bool,
               open_rows: int = 8, max_segments_per_row: int | None = None):
    self.parts, self.seq_len, self.seed = parts, seq_len, seed
    self.shuffle, self.pack, self.open_rows = shuffle, pack, open_rows
    self.max_segments_per_row = max_segments_per_row
    self._plans: collections.OrderedDict[int, _Plan] = collections.OrderedDict()
    self._lock = threading.Lock()
    self.num_units = sum(len(p.units) for p in parts)
    for p in parts:
      if not len(p.units):
        raise DataError(f"{p.store.meta['task']}/{p.store.meta['split']}: no example fits, "
                        f"all are shorter than 2 tokens or dropped as longer than "
                        f"seq_len={seq_len}")

  @property
  def fingerprint(self) -> str:
    desc = [(p.store.meta["task"], p.store.meta["split"], p.store.meta["vocab"],
             p.store.meta["num_tokens"], len(p.units), p.rate) for p in self.parts]
    plan = [desc, self.seq_len, self.shuffle, self.pack, self.open_rows]
    if self.max_segments_per_row is not None:  # uncapped plans keep their earlier fingerprint
      plan.append(self.max_segments_per_row)
    return hashlib.sha256(json.dumps(plan).encode()).hexdigest()[:16]

  @property
  def rows_per_epoch(self) -> int:
    """Rows in epoch 0: its examples unpacked, else its packed rows (other epochs' packings
    of other orders differ by a few rows)."""
    return self.plan(0).num_rows

  def warn_overlong(self) -> None:
    """One WARNING per task whose examples do not all fit a row: how many (and what share)
    were truncated or dropped, and the target tokens lost with them."""
    for p in self.parts:
      longer = int(np.count_nonzero(p.store.lengths > self.seq_len + 1))
      if longer and p.overlong != "split":  # split cuts them into rows and loses nothing
        logging.warning(
            "%s/%s: %d of %d examples (%.1f%%) are longer than a row of data.seq_len=%d and "
            "were %s (%d target tokens lost); raise data.seq_len to keep them",
            p.store.meta["task"], p.store.meta["split"], longer, len(p.store),
            100 * longer / len(p.store), self.seq_len,
            "truncated" if p.overlong == "truncate" else "dropped", p.units.tokens_lost)

  def _draw(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(part, unit) of every unit of the epoch, in the epoch's order."""
    if not self.shuffle:
      part = np.concatenate([np.full(len(p.units), i) for i, p in enumerate(self.parts)])
      unit = np.concatenate([np.arange(len(p.units)) for p in self.parts])
      return part, unit
    total_rate = sum(p.rate for p in self.parts)
    parts, units = [], []
    for i, p in enumerate(self.parts):
      # Task i's draws are one endless stream of its seeded permutations (cycle c is
      # permutation (seed, i, c)); epoch e takes items [e n, (e + 1) n) of it, so a task drawn
      # more often than its size repeats a unit only after all of its units appeared.
      n, size = round(self.num_units * p.rate / total_rate), len(p.units)
      first_cycle, last_cycle = epoch * n // size, -(-(epoch + 1) * n // size)
      stream = np.concatenate([np.zeros(0, np.int64)] + [
          np.random.default_rng([self.seed, i, c]).permutation(size)
          for c in range(first_cycle, last_cycle)])
      skip = epoch * n - first_cycle * size
      units.append(stream[skip:skip + n])
      parts.append(np.full(n, i))
    part, unit = np.concatenate(parts), np.concatenate(units)
    perm = np.random.default_rng([self.seed, 1 << 20, epoch]).permutation(len(part))
    return part[perm], unit[perm]

  def plan(self, epoch: int) -> _Plan:
    with self._lock:
      if epoch in self._plans:
        return self._plans[epoch]
      part, unit = self._draw(epoch)
      if self.pack:
        slots = np.zeros(len(part), np.int64)
        for i, p in enumerate(self.parts):
          slots[part == i] = p.units.slots[unit[part == i]]
        order, row_splits = packing.pack(slots, self.seq_len, open_rows=self.open_rows,
                                         max_segments_per_row=self.max_segments_per_row)
        part, unit = part[order], unit[order]
      else:
        row_splits = np.arange(len(part) + 1)
      plan = _Plan(part, unit, row_splits)
      self._plans[epoch] = plan
      while len(self._plans) > 3:  # batches in flight span at most a few epochs
        self._plans.popitem(last=False)
      return plan

  def rows(self, epoch_rows: list[tuple[int, int]], pad_id: int) -> dict[str, np.ndarray]:
    """Batch arrays for the given (epoch, row) list; (-1, -1) is an all-padding row."""
    pieces = []  # (part, unit ids, row index in batch)
    for b, (epoch, row) in enumerate(epoch_rows):
      if epoch < 0:
        continue
      plan = self.plan(epoch)
      sl = slice(plan.row_splits[row], plan.row_splits[row + 1])
      pieces.append((plan.part[sl], plan.unit[sl], np.full(sl.stop - sl.start, b)))
    batch = None
    for i, p in enumerate(self.parts):
      mine = [(u[pt == i], r[pt == i]) for pt, u, r in pieces]
      unit_ids = np.concatenate([u for u, _ in mine]) if mine else np.zeros(0, np.int64)
      row_of = np.concatenate([r for _, r in mine]) if mine else np.zeros(0, np.int64)
      if batch is not None and not len(unit_ids):
        continue
      part_batch = packing.assemble(p.store.tokens, p.store.offsets, p.store.prompt_lens,
                                    p.units, unit_ids, row_of, len(epoch_rows), self.seq_len,
                                    pad_id)
      batch = part_batch if batch is None else _merge_rows(batch, part_batch)
    return batch


def _merge_rows(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Overlays the segments of b onto a's rows (a mixture row can hold several tasks' units):
  b's segments go after a's in each row, renumbered after them."""
  out = {k: v.copy() for k, v in a.items()}
  for r in range(a["inputs"].shape[0]):
    b_cols = np.flatnonzero(b["segment_ids"][r])
    if not len(b_cols):
      continue
    used = int(np.count_nonzero(a["segment_ids"][r]))
    n_segs = int(a["segment_ids"][r].max())
    dest = used + np.arange(len(b_cols))
    for k in packing.BATCH_KEYS:
      out[k][r, dest] = b[k][r, b_cols]
    out["segment_ids"][r, dest] += n_segs
  return out


def open_source(task_name: str, split: str, vocab, seq_len: int, *, seed: int = 0,
                shuffle: bool = True, pack: bool = True, overlong: str | None = None,
                max_segments_per_row: int | None = None) -> DataSource:
  """A DataSource over a registered task or mixture (`overlong` overrides each task's mode,
  `max_segments_per_row` caps the examples packed into one row)."""
  parts = []
  for name, rate in tasks.task_components(task_name):
    store = token_store.load(name, split, vocab)
    mode = overlong or tasks.TASK_SPECS[name].overlong
    units = packing.make_units(store.lengths, seq_len, mode)
    logging.info("%s/%s: %d examples -> %d units of <= %d slots (%s: %d truncated, %d dropped, "
                 "%d target tokens lost)", name, split, len(store), len(units), seq_len, mode,
                 units.num_truncated, units.num_dropped, units.tokens_lost)
    parts.append(_Part(store, units, rate, mode))
  return DataSource(parts, seq_len, seed=seed, shuffle=shuffle, pack=pack,
                    max_segments_per_row=max_segments_per_row)


# ---------------------------------------------------------------------------------------------
# The iterator.

class BatchIterator:
  """Process-local batches `{inputs, targets, loss_mask, segment_ids, positions}`, each
  `[global_batch_size // process_count, seq_len]` int32, with a background thread preparing
  the next `prefetch` batches. `num_epochs=None` runs forever; otherwise the last batch is
  completed with padding rows and the iterator then stops.
  """

  def __init__(self, source: DataSource, *, global_batch_size: int, pad_id: int,
               process_index: int = 0, process_count: int = 1, num_epochs: int | None = None,
               prefetch: int = 2):
    if global_batch_size % process_count:
      raise DataError(f"global_batch_size={global_batch_size} is not divisible by the "
                      f"{process_count} processes")
    self.source = source
    self.global_batch_size, self.pad_id = global_batch_size, pad_id
    self.local_batch_size = global_batch_size // process_count
    self.process_index, self.process_count = process_index, process_count
    self.num_epochs = num_epochs
    self._position = (0, 0)  # (epoch, row) of the next batch's first row
    self._prefetch = prefetch
    self._pool = concurrent.futures.ThreadPoolExecutor(1) if prefetch else None
    self._pending: collections.deque = collections.deque()

  # The stream of global rows, in (epoch, row) coordinates.
  def _global_rows(self, position):
    """The next batch's (epoch, row) list (padding as (-1, -1)) and the position after it."""
    epoch, row = position
    rows = []
    while len(rows) < self.global_batch_size:
      if self.num_epochs is not None and epoch >= self.num_epochs:
        rows.append((-1, -1))
        continue
      n = self.source.plan(epoch).num_rows
      take = min(n - row, self.global_batch_size - len(rows))
      rows.extend((epoch, r) for r in range(row, row + take))
      row += take
      if row == n:
        epoch, row = epoch + 1, 0
    return rows, (epoch, row)

  def _finished(self, position) -> bool:
    return self.num_epochs is not None and position[0] >= self.num_epochs

  def _local_batch(self, rows) -> dict[str, np.ndarray]:
    lo = self.process_index * self.local_batch_size
    return self.source.rows(rows[lo:lo + self.local_batch_size], self.pad_id)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._pool is None:
      if self._finished(self._position):
        raise StopIteration
      rows, self._position = self._global_rows(self._position)
      return self._local_batch(rows)
    tail = self._pending[-1][1] if self._pending else self._position
    while len(self._pending) < self._prefetch + 1 and not self._finished(tail):
      rows, tail = self._global_rows(tail)
      self._pending.append((self._pool.submit(self._local_batch, rows), tail))
    if not self._pending:
      raise StopIteration
    future, self._position = self._pending.popleft()
    return future.result()

  def get_state(self) -> dict:
    """JSON-serialisable position of the next batch (identical on every process)."""
    epoch, row = self._position
    return {"version": _STATE_VERSION, "epoch": int(epoch), "row": int(row),
            "seed": self.source.seed, "source": self.source.fingerprint}

  def set_state(self, state: dict) -> None:
    """Continues from a `get_state()` result (of this or an earlier run of the same data)."""
    expected = {"version": _STATE_VERSION, "seed": self.source.seed,
                "source": self.source.fingerprint}
    wrong = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
    if wrong:
      raise DataError(f"iterator state does not match this data/config: {wrong} "
                      "(saved vs now; different task, data files, tokenizer, seq_len, seed, or "
                      "data.max_segments_per_row: cuDNN attention caps the examples packed per "
                      "row at model.max_segments)")
    for future, _ in self._pending:
      future.cancel()
    self._pending.clear()
    self._position = (int(state["epoch"]), int(state["row"]))

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# Entry points for the trainer.

def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return process_index, process_count


def validate_data_config(config, vocab, *, splits: tuple[str, ...] | None = None,
                         process_count: int | None = None) -> None:
  """Every data check that needs no compile; raises DataError naming the problem.

  Checks: seq_len against `model.max_seq_len`, the tokenizer against `model.vocab_size`, the
  batch against the process count, the task name, and that each split's files exist and are
  not empty (`splits` defaults to train, plus `data.eval_split` when the run evaluates).
  """
  data, model = config.data, config.model
  if data.seq_len < 1:
    raise DataError(f"data.seq_len must be positive, got {data.seq_len}")
  max_len = model.get("max_seq_len")
  if max_len and data.seq_len > max_len:
    raise DataError(f"data.seq_len={data.seq_len} exceeds model.max_seq_len={max_len}")
  model_vocab = model.get("vocab_size")
  if model_vocab and vocab.vocab_size > model_vocab:
    raise DataError(f"the tokenizer has {vocab.vocab_size} ids but model.vocab_size is "
                    f"{model_vocab}: tokens >= {model_vocab} would index past the embedding "
                    f"(use model.vocab_size >= {-(-vocab.vocab_size // 128) * 128} or the "
                    "model's own tokenizer)")
  _, count = _process(0, process_count)
  if data.global_batch_size < 1 or data.global_batch_size % count:
    raise DataError(f"data.global_batch_size={data.global_batch_size} must be a positive "
                    f"multiple of the process count {count}")
  data_dir = default_data.resolve_data_dir(data.data_dir)
  if not tf.io.gfile.isdir(data_dir):
    raise DataError(f"data.data_dir not found: {data_dir}")
  tasks.register_tasks(data_dir, vocab)
  components = tasks.task_components(data.task)
  if splits is None:
    evaluates = config.get("train") is None or config.train.get("eval_every", 1) > 0
    splits = ("train", data.eval_split) if evaluates else ("train",)
  for split in splits:
    for name, _ in components:
      tasks.task_files(name, split)


def config_source(config, vocab, split: str = "train", *, shuffle: bool = True) -> DataSource:
  """The DataSource of `config.data` for `split`, as the iterators read it (the data already
  validated by `validate_data_config`)."""
  data = config.data
  return open_source(data.task, split, vocab, data.seq_len, seed=data.seed, shuffle=shuffle,
                     pack=data.pack, overlong=data.get("overlong") or None,
                     max_segments_per_row=packing.max_segments_per_row(config))


def _make(config, vocab, split, *, shuffle, num_epochs, process_index, process_count, prefetch):
  index, count = _process(process_index, process_count)
  validate_data_config(config, vocab, splits=(split,), process_count=count)
  data = config.data
  source = config_source(config, vocab, split, shuffle=shuffle)
  return BatchIterator(source, global_batch_size=data.global_batch_size, pad_id=vocab.pad_id,
                       process_index=index, process_count=count, num_epochs=num_epochs,
                       prefetch=prefetch)


def make_train_iterator(config, vocab, *, split: str = "train", process_index: int | None = None,
                        process_count: int | None = None, prefetch: int = 2) -> BatchIterator:
  """Endless shuffled, packed batches of `config.data.task` (docs/ARCHITECTURE.md section 6).

  `process_index`/`process_count` default to JAX's (override them to simulate hosts).
  """
  return _make(config, vocab, split, shuffle=True, num_epochs=None, process_index=process_index,
               process_count=process_count, prefetch=prefetch)


def make_eval_iterator(config, vocab, *, split: str | None = None,
                       process_index: int | None = None, process_count: int | None = None
                       ) -> BatchIterator:
  """One unshuffled pass over `split` (default `config.data.eval_split`), last batch padded."""
  return _make(config, vocab, split or config.data.eval_split, shuffle=False, num_epochs=1,
               process_index=process_index, process_count=process_count, prefetch=1)


def to_global_arrays(batch: dict[str, np.ndarray], sharding) -> dict:
  """Assembles the process-local rows into global `jax.Array`s with the given sharding (its
  first axis is the batch; the processes' rows are stacked in process order)."""
  import jax  # pylint: disable=g-import-not-at-top
  out = {}
  for k, v in batch.items():
    global_shape = (v.shape[0] * jax.process_count(), *v.shape[1:])
    out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
  return out
