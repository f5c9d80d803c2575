"""Packing: units, first-fit rows, and batch arrays that unpack to the original examples."""
import collections

import numpy as np
import pytest

from editseq import packing


def _store(rng, n, max_len=90):
  lengths = rng.integers(0, max_len, size=n)
  offsets = np.r_[0, np.cumsum(lengths)]
  tokens = rng.integers(3, 1000, size=int(offsets[-1])).astype(np.uint16)
  prompt_lens = (rng.random(n) * lengths).astype(np.int32)
  return tokens, offsets, prompt_lens, lengths


@pytest.mark.parametrize("mode", packing.OVERLONG_MODES)
def test_units(mode):
  lengths = np.array([0, 1, 2, 17, 33, 34, 100])
  units = packing.make_units(lengths, 32, mode)
  assert np.all(units.length >= 2) and np.all(units.slots <= 32)
  assert units.num_dropped == 2 + (2 if mode == "drop" else 0)  # 0/1-token ones, then 34, 100
  if mode == "split":
    # Every target of every example is covered exactly once.
    covered = collections.Counter()
    for e, s, n in zip(units.example, units.start, units.length):
      covered.update((int(e), int(s) + j + 1) for j in range(n - 1))
    assert covered == collections.Counter(
        (e, t) for e, n in enumerate(lengths) for t in range(1, n))
  elif mode == "truncate":
    assert units.num_truncated == 2 and units.tokens_lost == (33 - 32) + (99 - 32)
    assert list(units.length) == [2, 17, 33, 33, 33]
  else:
    assert list(units.example) == [2, 3, 4]


def test_units_bad_mode():
  with pytest.raises(ValueError, match="overlong must be one of"):
    packing.make_units(np.array([3]), 8, "wrap")


@pytest.mark.parametrize("open_rows", [1, 4, 8])
def test_pack_places_every_unit_once(open_rows):
  rng = np.random.default_rng(open_rows)
  slots = rng.integers(1, 65, size=500)
  order, splits = packing.pack(slots, 64, open_rows=open_rows)
  assert sorted(order.tolist()) == list(range(500))
  per_row = np.add.reduceat(slots[order], splits[:-1])
  assert per_row.max() <= 64
  if open_rows == 1:
    assert order.tolist() == list(range(500))  # sequential packing keeps the order


def test_more_open_rows_pack_tighter():
  slots = np.random.default_rng(0).integers(5, 400, size=3000)
  rows = {k: len(packing.pack(slots, 1024, open_rows=k)[1]) - 1 for k in (1, 8)}
  assert rows[8] < rows[1]
  assert slots.sum() / (rows[8] * 1024) > 0.95


@pytest.mark.parametrize("cap", [1, 3, 16])
def test_pack_segment_cap(cap):
  # Short units (16 per row on average uncapped): the cap, not the room, closes most rows.
  slots = np.random.default_rng(cap).integers(1, 8, size=2000)
  order, splits = packing.pack(slots, 64, max_segments_per_row=cap)
  assert sorted(order.tolist()) == list(range(2000))
  assert np.diff(splits).max() <= cap
  assert np.add.reduceat(slots[order], splits[:-1]).max() <= 64
  uncapped = packing.pack(slots, 64)[1]
  assert np.diff(uncapped).max() > cap or cap == 16
  if cap == 1:
    assert order.tolist() == list(range(2000))  # one unit per row, in order
  # Deterministic: the plan is a pure function of its inputs.
  again = packing.pack(slots, 64, max_segments_per_row=cap)
  assert np.array_equal(again[0], order) and np.array_equal(again[1], splits)


def test_pack_rejects_bad_input():
  with pytest.raises(ValueError, match="must fill"):
    packing.pack(np.array([3, 9]), 8)
  with pytest.raises(ValueError, match="max_segments_per_row must be positive"):
    packing.pack(np.array([3]), 8, max_segments_per_row=0)


@pytest.mark.parametrize("mode,cap", [("truncate", None), ("split", None), ("truncate", 2)])
def test_assemble_unpack_round_trip(mode, cap):
  rng = np.random.default_rng(1)
  tokens, offsets, prompt_lens, lengths = _store(rng, 300)
  seq_len = 48
  units = packing.make_units(lengths, seq_len, mode)
  order, splits = packing.pack(units.slots, seq_len, max_segments_per_row=cap)
  row_of = np.repeat(np.arange(len(splits) - 1), np.diff(splits))
  batch = packing.assemble(tokens, offsets, prompt_lens, units, order, row_of,
                           len(splits) - 1, seq_len, pad_id=0)
  assert all(v.shape == (len(splits) - 1, seq_len) and v.dtype == np.int32
             for v in batch.values())
  segments = packing.unpack(batch)
  assert len(segments) == len(units)
  for seg, u in zip(segments, order):
    e, s, n = units.example[u], units.start[u], units.length[u]
    np.testing.assert_array_equal(seg["tokens"], tokens[offsets[e] + s:offsets[e] + s + n])
    # The loss is on targets that are completion tokens (index >= prompt length) only.
    np.testing.assert_array_equal(seg["loss_mask"], s + np.arange(1, n) >= prompt_lens[e])
    np.testing.assert_array_equal(seg["positions"], np.arange(n - 1))
  # Padding: segment 0, pad id, no loss.
  pad = batch["segment_ids"] == 0
  assert np.all(batch["inputs"][pad] == 0) and np.all(batch["loss_mask"][pad] == 0)
  # Segments fill each row from the left, numbered 1, 2, ...
  for row in batch["segment_ids"]:
    used = row[row > 0]
    assert np.all(row[:len(used)] > 0) and list(np.unique(used)) == list(range(1, used.max() + 1))
    assert cap is None or used.max() <= cap


def test_assemble_empty_rows():
  units = packing.make_units(np.array([5]), 8, "truncate")
  batch = packing.assemble(np.arange(5), np.array([0, 5]), np.array([0]), units,
                           np.zeros(0, np.int64), np.zeros(0, np.int64), 2, 8, pad_id=7)
  assert np.all(batch["inputs"] == 7) and not batch["segment_ids"].any()
