"""editseq.perf.bench_input: the figures it prints describe the batches it drew."""
import json

import pytest

from editseq.perf import bench_input


def _run(capsys, *args):
  assert bench_input.main(["--data_dir", "default:small", "--batch", "8", "--seq_len", "256",
                           "--steps", "3", *args]) == 0
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_cap_on_examples_per_row_binds_and_costs_packing(capsys):
  free = _run(capsys)
  assert free["max_segments_per_row"] is None and free["segments_per_row"]["max"] > 1
  capped = _run(capsys, "--max_segments_per_row", "1")
  assert capped["segments_per_row"] == {"median": 1.0, "p90": 1.0, "max": 1}
  assert 0 < capped["packing_efficiency"] < free["packing_efficiency"] <= 1


def test_a_cap_below_one_is_a_usage_error(capsys):
  with pytest.raises(SystemExit) as exit_info:
    bench_input.main(["--max_segments_per_row", "0"])
  assert exit_info.value.code == 2
  assert "--max_segments_per_row must be >= 1" in capsys.readouterr().err
