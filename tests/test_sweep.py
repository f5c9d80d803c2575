"""eval.sweep end to end on a tiny random checkpoint: one eval.run folder per sampling setting,
sweep.json and the pass@k-against-temperature plot, reuse on a rerun, and its mistakes."""
import json
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import colors
from matplotlib import image

from eval import plots, run, sweep
from tests import test_run
from tests.conftest import REPO_ROOT

# eval.run's tests' fixtures: a tiny random checkpoint and its tokenizer.
checkpoint, vocab_path = test_run.checkpoint, test_run.vocab_path

# 960 x 660 pixels: the figure's 6.4 x 4.4 inches at 150 dpi.
PLOT_SHAPE = (660, 960)


def _has_colour(png, colour) -> bool:
  """Whether some pixel of the PNG is matplotlib colour `colour` (e.g. "C0": the first line)."""
  pixels = image.imread(str(png))[..., :3]
  return bool(np.any(np.all(np.abs(pixels - np.array(colors.to_rgb(colour))) < 0.02, axis=-1)))


def _sweep_args(checkpoint, out, temperatures="0.5,1.0"):
  return ["--checkpoint", checkpoint, "--benchmark", "humaneval", "--task_range", "0:2",
          "--num_samples", "10", "--max_new_tokens", "8", "--batch_size", "8",
          "--temperatures", temperatures, "--top_p", "0.95", "--output_dir", str(out),
          "--workers", "2"]


@pytest.mark.sandbox
def test_sweep_writes_a_summary_per_setting_a_table_and_the_plot(checkpoint, tmp_path, capsys):
  out = tmp_path / "sweep"
  assert sweep.main(_sweep_args(checkpoint, out)) == 0
  table = json.loads((out / sweep.SWEEP_FILE).read_text())
  assert [r["setting"] for r in table["settings"]] == ["t0.5_p0.95", "t1_p0.95"]
  for row, temperature in zip(table["settings"], (0.5, 1.0)):
    summary = json.loads((out / row["summary"]).read_text())
    assert (summary["temperature"], summary["top_p"]) == (temperature, 0.95)
    assert (row["temperature"], row["top_p"]) == (temperature, 0.95)
    assert summary["num_samples"] == 20 and summary["subset"] == "0:2"
    # random weights solve nothing; n = 10 allows pass@1 and pass@10
    assert row["suites"] == {"base": {"pass@1": 0.0, "pass@10": 0.0}}
    assert row["mean_parse_rate"] == summary["mean_parse_rate"]
  assert table["plotted_suite"] == "base" and table["samples_per_problem"] == 10
  png = out / sweep.PLOT_FILE
  assert image.imread(str(png)).shape[:2] == PLOT_SHAPE
  assert _has_colour(png, "C0") and _has_colour(png, "C1")  # pass@1 and pass@10
  capsys.readouterr()

  # A rerun with one more temperature evaluates only that one.
  assert sweep.main(_sweep_args(checkpoint, out, "0.5,1.0,0.2")) == 0
  err = capsys.readouterr().err
  assert err.count("eval: reusing") == 2 and "t0.2_p0.95" in err
  rows = json.loads((out / sweep.SWEEP_FILE).read_text())["settings"]
  assert [r["setting"] for r in rows] == ["t0.5_p0.95", "t1_p0.95", "t0.2_p0.95"]
  assert rows[:2] == table["settings"]
  # Each folder is eval.run's own: the same flags reuse it.
  assert run.main(["--checkpoint", checkpoint, "--benchmark", "humaneval", "--task_range", "0:2",
                   "--num_samples", "10", "--max_new_tokens", "8", "--batch_size", "8",
                   "--temperature", "0.2", "--top_p", "0.95", "--output_dir",
                   str(out / "t0.2_p0.95"), "--workers", "2"]) == 0
  assert "eval: reusing" in capsys.readouterr().err


def test_the_plot_draws_one_line_per_k_and_top_p(tmp_path):
  points = [(t, p, {"pass@1": 0.1 * t * p, "pass@10": 0.5 * p})
            for t in (0.2, 0.8, 1.0) for p in (0.9, 0.95)]
  png = plots.plot_passk_vs_temperature(points, tmp_path / "sweep.png", title="t")
  assert image.imread(str(png)).shape[:2] == PLOT_SHAPE
  assert all(_has_colour(png, f"C{i}") for i in range(4)) and not _has_colour(png, "C4")
  with pytest.raises(plots.PlotError):
    plots.plot_passk_vs_temperature([], tmp_path / "empty.png")


@pytest.mark.parametrize("temperatures, message", [
    ("0.2,-1", "temperature must be a finite number >= 0"),
    ("0.2,hot", "not a comma-separated list of numbers"),
])
def test_sweep_mistakes_are_one_line_errors_before_any_evaluation(checkpoint, tmp_path,
                                                                  temperatures, message):
  out = tmp_path / "sweep"
  proc = subprocess.run([sys.executable, "-m", "eval.sweep",
                         *_sweep_args(checkpoint, out, temperatures)],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  errors = [line for line in proc.stderr.splitlines() if "error:" in line]
  assert len(errors) == 1 and message in errors[0], proc.stderr
  assert "Traceback" not in proc.stderr and not (out / "t0.2_p0.95").exists()
