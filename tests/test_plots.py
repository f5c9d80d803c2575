"""eval.plots: coverage-curve PNGs from eval.run summaries."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from eval import passk, plots
from tests.conftest import REPO_ROOT


def write_summary(path, curves, benchmark="humaneval_plus"):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({
      "benchmark": benchmark, "format": "lintseq", "checkpoint": str(path.parent),
      "suites": {suite: {"coverage": curve} for suite, curve in curves.items()}}))
  return path


def curve(seed, n=50, problems=40):
  rng = np.random.default_rng(seed)
  return passk.coverage_curve([(n, int(rng.integers(0, n + 1) * rng.random() ** 2))
                               for _ in range(problems)])


def test_plot_coverage_writes_a_png(tmp_path):
  out = plots.plot_coverage([("LintSeq", curve(0)), ("Baseline", curve(1, n=20))],
                            tmp_path / "sub" / "fig.png", title="HumanEval")
  with Image.open(out) as image:
    assert image.format == "PNG"
    assert image.size[0] > 600 and image.size[1] > 400
    # Not blank: the curves and text put many distinct colours on the canvas.
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 20


def test_single_point_curve(tmp_path):
  out = plots.plot_coverage([("one sample", [0.25])], tmp_path / "fig.png")
  assert out.read_bytes().startswith(b"\x89PNG")


def test_load_curve_picks_plus_for_plus_benchmarks(tmp_path):
  path = write_summary(tmp_path / "a" / "summary.json", {"base": [0.5, 0.6], "plus": [0.4, 0.5]})
  assert plots.load_curve(path)[1] == [0.4, 0.5]
  assert plots.load_curve(path, "base")[1] == [0.5, 0.6]
  with pytest.raises(plots.PlotError, match="no suite"):
    plots.load_curve(write_summary(tmp_path / "b" / "summary.json", {"base": [0.5]}), "plus")


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "eval.plots", *map(str, args)], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=120)


def test_cli_overlays_runs(tmp_path):
  a = write_summary(tmp_path / "lintseq" / "summary.json", {"base": curve(2), "plus": curve(3)})
  b = write_summary(tmp_path / "baseline" / "summary.json", {"base": curve(4), "plus": curve(5)})
  proc = run_cli("--runs", a, b, "--labels", "LintSeq", "Baseline", "--output", tmp_path / "f.png")
  assert proc.returncode == 0, proc.stderr
  assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("content, labels, message", [
    ("not json", None, "cannot read"),
    ('{"benchmark": "humaneval"}', None, "not an eval.run summary"),
    (None, ["one", "two"], "2 labels for 1 runs"),
])
def test_cli_bad_input_is_a_one_line_error(tmp_path, content, labels, message):
  path = tmp_path / "summary.json"
  if content is None:
    write_summary(path, {"base": [0.1]})
  else:
    path.write_text(content)
  proc = run_cli("--runs", path, *(["--labels", *labels] if labels else []),
                 "--output", tmp_path / "f.png")
  assert proc.returncode == 2
  assert message in proc.stderr and "Traceback" not in proc.stderr
