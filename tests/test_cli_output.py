"""What users see from the command-line tools: --help that exits 0 and says what it should,
Beam's worker chatter kept out of data_gen's output, and data_gen reruns that reuse an unchanged
output (subprocesses on the real commands)."""
import json
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def _run(*args, env=None):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=600, env=env)


def test_train_help_exits_0_and_lists_configs_and_keys():
  result = _run("editseq.train", "--help")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "--workdir" in result.stdout and "tinycodelm_150m" in result.stdout
  assert "keys of configs/base.py" in result.stdout and "  train.steps = " in result.stdout
  given = _run("editseq.train", "--config=configs/test_tiny.py", "--config.train.steps=7",
               "--help")
  assert given.returncode == 0, given.stderr[-2000:]
  assert "keys of configs/test_tiny.py" in given.stdout
  assert "  train.steps = 7" in given.stdout and "  model.d_model = 64" in given.stdout


@pytest.mark.parametrize("module, args", [
    ("eval.run", ["--checkpoint", "x", "--benchmark", "humaneval", "--output_dir", "y",
                  "--num_samples", "0"]),
    ("eval.run", ["--benchmark", "nope"]),
    ("eval.execute", ["--bogus"]),
    ("eval.plots", []),
    ("eval.perf.bench_execute", ["--rounds", "0"]),
    ("editseq.convert", ["gguf-to-editseq"]),
    ("data_gen.pipeline", ["--output_dir", "x", "--source", "nope"]),
])
def test_argparse_mistakes_are_one_error_line_without_usage(module, args):
  result = _run(module, *args)
  assert result.returncode == 2, result.stderr[-2000:]
  assert len(result.stderr.splitlines()) == 1, result.stderr[-2000:]
  assert result.stderr.startswith("error: "), result.stderr[-2000:]


def test_eval_help_names_the_command_and_each_default_once():
  plots = _run("eval.plots", "--help")
  assert plots.returncode == 0 and plots.stdout.startswith("usage: python -m eval.plots")
  run = _run("eval.run", "--help")
  assert run.returncode == 0
  text = " ".join(run.stdout.split())
  assert "(default: None)" not in text and "task) (default:" not in text
  assert "--top_p TOP_P nucleus sampling's probability mass (default: 0.95)" in text
  options = re.split(r" --(?=[a-z])", text.split("options:")[1])
  assert len(options) > 15 and all(o.count("default") <= 1 for o in options), options


def test_data_gen_help_describes_every_flag():
  result = _run("data_gen.pipeline", "--help")
  assert result.returncode == 0
  text = " ".join(result.stdout.split())
  for flag in ("--tfds_name", "--tfds_split", "--tfds_data_dir", "--hf_dataset", "--hf_config",
               "--hf_split"):
    metavar = flag.removeprefix("--").upper()
    assert f"{flag} {metavar} --source" in text, flag


@pytest.fixture
def programs(tmp_path):
  path = tmp_path / "programs.jsonl"
  rows = [{"instruction": f"Add {i}.", "response": f"def add_{i}(x):\n    y = x + {i}\n"
           f"    return y\n"} for i in range(6)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def _data_gen(programs, out, *extra):
  return _run("data_gen.pipeline", "--output_dir", str(out), "--source", "jsonl", "--input",
              str(programs), "--no_progress", "--validation_fraction", "0.5", *extra)


def test_data_gen_workers_keep_beams_log_lines_to_themselves(programs, tmp_path):
  result = _data_gen(programs, tmp_path / "out", "--direct_num_workers=2",
                     "--direct_running_mode=multi_processing")
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr == "", result.stderr[-3000:]  # was ~40 INFO/WARNING lines
  assert "programs out     6" in result.stdout
  verbose = _data_gen(programs, tmp_path / "verbose", "--direct_num_workers=2",
                      "--direct_running_mode=multi_processing", "--beam_log_level=INFO")
  assert verbose.returncode == 0
  assert "INFO:apache_beam.runners.worker.sdk_worker:" in verbose.stderr


def test_data_gen_workers_share_one_progress_bar(programs, tmp_path):
  """Two worker processes each drew their own bar over the other, with their share of the count;
  now the launching process draws one bar that counts every worker's programs."""
  result = _run("data_gen.pipeline", "--output_dir", str(tmp_path / "out"), "--source", "jsonl",
                "--input", str(programs), "--variants", "baseline", "--direct_num_workers=2",
                "--direct_running_mode=multi_processing")
  assert result.returncode == 0, result.stderr[-3000:]
  counts = [int(n) for n in re.findall(r"data_gen: (\d+) programs", result.stderr)]
  assert counts and counts == sorted(counts) and counts[-1] == 6, result.stderr[-3000:]


@pytest.mark.slow  # five data_gen runs; tests/test_quickstart.py covers a reuse in the fast tier
def test_data_gen_rerun_reuses_an_unchanged_output(programs, tmp_path):
  out = tmp_path / "out"
  first = _data_gen(programs, out)
  assert first.returncode == 0, first.stderr[-3000:]
  shards = sorted(out.rglob("*.tfrecord-*"))
  stamps = [(p, p.stat().st_mtime_ns) for p in shards]

  again = _data_gen(programs, out)
  assert again.returncode == 0
  assert again.stderr.startswith(f"data_gen: reusing {out} (made from the same inputs")
  assert again.stdout == first.stdout  # the same stats, read back
  assert [(p, p.stat().st_mtime_ns) for p in shards] == stamps

  forced = _data_gen(programs, out, "--force")
  assert forced.returncode == 0 and "reusing" not in forced.stderr
  assert [p.read_bytes() for p in shards] == [p.read_bytes() for p, _ in stamps]

  with open(programs, "a") as f:  # a changed input
    f.write(json.dumps({"instruction": "One.", "response": "def one():\n    return 1\n"}) + "\n")
  changed = _data_gen(programs, out)
  assert changed.returncode == 0 and "reusing" not in changed.stderr
  assert "programs out     7" in changed.stdout


def test_first_use_of_the_default_tokenizer_says_what_it_builds(tmp_path, monkeypatch, capsys):
  """Training on your own data still builds the default tokenizer, and with it the small default
  dataset it is trained on: the lines say so (the builds themselves are stand-ins here)."""
  from data_gen import dataset, pipeline
  from editseq import default_data, tokenizer
  monkeypatch.setenv("EDITSEQ_CACHE", str(tmp_path))
  monkeypatch.setattr(pipeline, "run", lambda **kwargs: None)
  monkeypatch.setattr(dataset, "read_examples", lambda *args: [])
  monkeypatch.setattr(tokenizer, "iter_python_sources", lambda: [])
  monkeypatch.setattr(tokenizer, "train_tokenizer",
                      lambda texts, path, vocab_size: (list(texts), path.write_text("{}")))
  default_data.default_vocab_path()
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 2, lines
  assert lines[0].startswith("editseq: generating the embedded default data (small) under")
  assert "the default tokenizer's training text" in lines[0]
  assert lines[1].startswith("editseq: training the default tokenizer (8,192 ids)")
