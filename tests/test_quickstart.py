"""scripts/quickstart.sh, the README's first command, run as a user runs it: in a fresh copy of
this repository under /tmp (the files git tracks or would track, uncommitted edits included),
with the default relative output folder, then run again in the same copy.

It runs the main job, the smoke experiment (configs/experiments/smoke.py: LintSeq vs baseline
finetuning, both evaluated on HumanEval+ and MBPP+), reusing this interpreter's packages
(EDITSEQ_PYTHON, documented in scripts/setup.sh) and the test session's $EDITSEQ_CACHE. The
evalplus files, which a user's first run downloads, come from the local benchmark data through
the download's mirror setting (EDITSEQ_EVALPLUS_URL).
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, SHARED_DATA
from tests.test_experiment import check_smoke_artefacts, check_smoke_rerun, files_of

PLUS_FILES = ("HumanEvalPlus.jsonl.gz", "MbppPlus.jsonl.gz")


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
  env.update(EDITSEQ_PYTHON=sys.executable, EDITSEQ_EVALPLUS_URL=SHARED_DATA.as_uri())
  return subprocess.run(["bash", "scripts/quickstart.sh"], cwd=clone, env=env,
                        capture_output=True, text=True, timeout=1500)


@pytest.mark.skipif(shutil.which("git") is None or not (REPO_ROOT / ".git").exists(),
                    reason="needs a git checkout to copy")
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="the eval sandbox needs bubblewrap")
@pytest.mark.skipif(not all((SHARED_DATA / f).exists() for f in PLUS_FILES),
                    reason="needs the HumanEval+/MBPP+ files")
def test_quickstart_runs_in_a_fresh_clone_and_reruns_from_its_outputs(tmp_path):
  clone = tmp_path / "editseq"
  _copy_repository(clone)
  assert not (clone / "artifacts").exists() and not (clone / ".venv").exists()

  first = _quickstart(clone)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
  out = clone / "artifacts" / "smoke"
  check_smoke_artefacts(out, first.stderr)
  # The report names the config as a user typed it, not by this machine's absolute path.
  report = (out / "report" / "report.md").read_text()
  assert "(`configs/experiments/smoke.py`, section" in report and str(clone) not in report
  # What the user sees: Beam's own log lines stay out of the way (data_gen --beam_log_level).
  assert "INFO:" not in first.stderr and "apitools" not in first.stderr, first.stderr[-3000:]
  assert "semi_persistent_directory" not in first.stderr
  before = files_of(out)

  second = _quickstart(clone)
  assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
  check_smoke_rerun(out, second.stderr, before)
  # No stale progress bar: finished stages are reported before any bar exists.
  assert "%|" not in second.stderr and "step/s" not in second.stderr, second.stderr[-3000:]
