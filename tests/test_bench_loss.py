"""The head + loss benchmark: figures for every chunk size, chunked gradients equal, bad input."""
import json

import pytest

from editseq.perf import bench_loss


def test_prints_a_row_and_a_json_record_per_chunk_size(capsys):
  assert bench_loss.main(["--batch", "2", "--seq_len", "24", "--d_model", "16", "--vocab", "300",
                          "--chunks", "0,8,7", "--rounds", "2", "--softcap", "5"]) == 0
  lines = capsys.readouterr().out.splitlines()
  record = json.loads(lines[-1])
  assert [r["chunk_size"] for r in record["results"]] == [0, 8, 7]
  assert lines[2].split()[0] == "whole" and [line.split()[0] for line in lines[3:5]] == ["8", "7"]
  for r in record["results"]:
    assert r["step_s"] > 0 and len(r["step_s_rounds"]) == 2 and r["temp_bytes"] >= 0
    # bf16 hidden states: the chunks round their partial head gradients once each.
    assert r["loss_rel_diff"] < 1e-5 and r["d_hidden_rel_diff"] < 1e-2
    assert r["d_head_rel_diff"] < 1e-2
  assert record["command"].endswith("--softcap 5")


@pytest.mark.parametrize("argv, message", [
    (["--chunks", "0,-8"], "chunk sizes must be >= 0"),
    (["--chunks", "a"], "expected comma-separated integers"),
    (["--rounds", "0"], "--rounds must be >= 1"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    bench_loss.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err
