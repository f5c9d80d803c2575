"""scripts/quickstart.sh, the README's first command, run as a user runs it: in a fresh copy of
this repository under /tmp (the files git tracks or would track, uncommitted edits included),
with the default relative output folder, then run again in the same copy.

It reuses this interpreter's packages (EDITSEQ_PYTHON, documented in scripts/setup.sh) and
the test session's $EDITSEQ_CACHE (tokenizer), and keeps to the fast tier with a small sample:
MAX_PROGRAMS programs, STEPS train steps, PROBLEMS HumanEval problems.
"""
import hashlib
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

MAX_PROGRAMS, STEPS, PROBLEMS, SAMPLES = 100, 4, 2, 4  # 100: 1 validation program


def _copy_repository(dest: pathlib.Path) -> None:
  listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          cwd=REPO_ROOT, capture_output=True, check=True).stdout
  for name in filter(None, listed.decode().split("\0")):
    source = REPO_ROOT / name
    if source.is_file() and not source.is_symlink():
      (dest / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(source, dest / name)


def _quickstart(clone: pathlib.Path) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
  env.update(EDITSEQ_PYTHON=sys.executable, MAX_PROGRAMS=str(MAX_PROGRAMS), STEPS=str(STEPS),
             PROBLEMS=f"0:{PROBLEMS}")
  return subprocess.run(["bash", "scripts/quickstart.sh"], cwd=clone, env=env, capture_output=True,
                        text=True, timeout=1200)


def _digests(folder: pathlib.Path) -> dict[str, tuple[str, int]]:
  return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       p.stat().st_mtime_ns)
          for p in sorted(folder.rglob("*")) if p.is_file()}


def _check_artifacts(out: pathlib.Path) -> None:
  for variant in ("lintseq", "baseline", "lintseq_nolint"):
    stats = json.loads((out / "data" / variant / "stats.json").read_text())
    assert stats["programs_out"] == MAX_PROGRAMS, stats
    per_program = 1 if variant == "baseline" else 5
    assert stats["sequences_out"] == per_program * MAX_PROGRAMS, stats
    assert list((out / "data" / variant / "1.0.0").glob(f"{variant}-train.tfrecord-*"))

  run = out / "run_tiny"
  assert (run / "config.json").is_file()
  assert (run / "checkpoints" / str(STEPS) / "state").is_dir()
  records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert records and records[-1]["step"] == STEPS
  assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in records)
  [events] = (run / "tensorboard").glob("events.out.tfevents.*")
  assert b"loss" in events.read_bytes()

  evaluation = out / "eval_tiny"
  samples = (evaluation / "samples.jsonl").read_text().splitlines()
  results = [json.loads(line) for line in (evaluation / "results.jsonl").read_text().splitlines()]
  assert len(samples) == len(results) == PROBLEMS * SAMPLES
  summary = json.loads((evaluation / "summary.json").read_text())
  assert summary["num_problems"] == PROBLEMS and summary["format"] == "lintseq"
  coverage = summary["suites"]["base"]["coverage"]
  assert len(coverage) == SAMPLES and all(0 <= v <= 1 for v in coverage)
  assert coverage == sorted(coverage) and summary["suites"]["base"]["pass@1"] == coverage[0]
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(evaluation / "coverage.png") as image:
    image.load()
    assert image.format == "PNG" and min(image.size) > 100


@pytest.mark.skipif(shutil.which("git") is None or not (REPO_ROOT / ".git").exists(),
                    reason="needs a git checkout to copy")
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="the eval sandbox needs bubblewrap")
def test_quickstart_runs_in_a_fresh_clone_and_reruns_from_its_outputs(tmp_path):
  clone = tmp_path / "editseq"
  _copy_repository(clone)
  assert not (clone / "artifacts").exists() and not (clone / ".venv").exists()

  first = _quickstart(clone)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
  out = clone / "artifacts"
  _check_artifacts(out)
  # What the user sees: Beam's own log lines stay out of the way (data_gen --beam_log_level).
  assert "INFO:" not in first.stderr and "apitools" not in first.stderr, first.stderr[-3000:]
  assert "semi_persistent_directory" not in first.stderr
  before = _digests(out)

  second = _quickstart(clone)
  assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
  assert "data_gen: reusing" in second.stderr, second.stderr[-3000:]
  assert f"is already trained to step {STEPS}" in second.stderr
  assert "eval: reusing" in second.stderr
  # No stale progress bar: the finished run is reported before any bar exists.
  assert "%|" not in second.stderr and "step/s" not in second.stderr, second.stderr[-3000:]
  assert _digests(out) == before  # nothing rewritten: same bytes, same modification times
