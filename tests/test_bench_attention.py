"""editseq.perf.bench_attention: the rows it builds, the records it prints, and one-line errors."""
import json

import numpy as np
import pytest

from editseq.perf import bench_attention

SMALL = ["--batch", "2", "--seq_len", "128", "--heads", "4", "--kv_heads", "2", "--head_dim",
         "16", "--steps", "1"]


def test_rows_are_split_into_segments_whose_positions_restart():
  ids = bench_attention._segment_ids(2, 10, 3)  # pylint: disable=protected-access
  assert ids.tolist() == [[1, 1, 1, 1, 2, 2, 2, 2, 3, 3]] * 2
  positions = bench_attention._positions(ids, 2, 10)  # pylint: disable=protected-access
  assert positions.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 0, 1]] * 2
  assert bench_attention._segment_ids(2, 10, None) is None  # pylint: disable=protected-access
  unpacked = bench_attention._positions(None, 1, 4)  # pylint: disable=protected-access
  assert unpacked.tolist() == [[0, 1, 2, 3]]


def test_times_each_setting_that_runs_here(capsys):
  assert bench_attention.main([*SMALL, "--segments_per_row", "none,1,4", "--window", "32"]) == 0
  out = capsys.readouterr().out.strip().splitlines()
  result = json.loads(out[-1])
  assert (result["device_kind"], result["kv_heads"], result["window"]) == ("cpu", 2, 32)
  records = result["records"]
  assert [(r["impl"], r["segments_per_row"]) for r in records] == [
      ("xla", None), ("xla", 1), ("xla", 4)]  # on a CPU only XLA attention runs
  assert all(r["ms_per_layer"] > 0 and np.isfinite(r["tflops_per_s"]) for r in records)
  assert len(out) == 1 + len(records) + 1  # a header, a line per setting, the JSON


@pytest.mark.parametrize("args, message", [
    (["--impl", "cudnn"], "attention 'cudnn' does not run on cpu"),
    (["--impl", "flash"], "expected xla, cudnn or splash"),
    (["--segments_per_row", "0"], "counts >= 1"),
    (["--max_segments", "four"], "expected a comma-separated list"),
])
def test_bad_arguments_are_one_line_errors(args, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    bench_attention.main([*SMALL, *args])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
