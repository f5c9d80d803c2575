"""eval.run end to end on a tiny random checkpoint, a few real problems and the sandbox."""
import json
import subprocess
import sys

import pytest
from flax import nnx

from configs import test_tiny
from editseq import checkpointing, tokenizer
from editseq.model import ModelConfig, Transformer
from data_gen import edit_format
from eval import benchmarks, run
from tests.conftest import REPO_ROOT

VOCAB = 512


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
  sources = [p.read_text() for p in sorted((tokenizer.stdlib_root() / "json").glob("*.py"))]
  return tokenizer.train_tokenizer(sources, tmp_path_factory.mktemp("tok") / "tokenizer.json",
                                   vocab_size=VOCAB)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, vocab_path):
  """A run folder in the trainer's layout holding a random test_tiny-shaped model."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = test_tiny.get_config()
  config.model.vocab_size = VOCAB
  config.data.vocab_path = str(vocab_path)
  config.data.task = "editseq_lintseq_instruct"
  checkpointing.save_config(workdir, config)
  model = Transformer(ModelConfig.from_config_dict(config.model, config.train), rngs=nnx.Rngs(0))
  saver = checkpointing.Checkpointer(workdir, every=1, keep=1)
  saver.save(1, {"step": 1, "params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                 "opt_state": {}}, {}, force=True)
  saver.wait_until_finished()
  saver.close()
  return workdir


def test_default_format_from_training_task():
  assert run.default_format("editseq_lintseq_instruct") == "lintseq"
  assert run.default_format("editseq_lintseq_nolint_instruct") == "lintseq"
  assert run.default_format("editseq_baseline_instruct") == "instruct"
  assert run.default_format("editseq_pretrain") == "base"
  assert run.default_format("my_mixture") is None


def test_lintseq_stop_sequence_is_how_the_tokenizer_writes_a_double_diff(vocab_path):
  vocab = tokenizer.load_vocabulary(vocab_path)
  (sequence,), strings = run.stop_conditions("lintseq", vocab)
  assert list(vocab.encode("@@ -0,0 +1 @@\n+x = 1" + run.DOUBLE_DIFF))[-len(sequence):] == sequence
  assert sequence[0] == sequence[-1] == vocab.diff_id
  assert strings == [run.DOUBLE_DIFF]
  assert run.stop_conditions("instruct", vocab) == ([], [])
  assert "\ndef" in run.stop_conditions("base", vocab)[1]


def test_lintseq_prompt_is_tokenized_as_in_training(vocab_path):
  """Instruction, then the first separator, each tokenized alone: the start of a training
  example's inputs + targets, whatever the instruction's last characters."""
  vocab = tokenizer.load_vocabulary(vocab_path)
  problems = [benchmarks.Problem(task_id="t", benchmark="humaneval", prompt="", instruction=text,
                                 entry_point="f", canonical_solution="")
              for text in ("Write f.", "Write f.\n  ")]
  for problem, ids in zip(problems, run.prompt_ids(problems, "lintseq", vocab)):
    prompt, completion = edit_format.lintseq_example(problem.instruction, ["@@ -0,0 +1 @@\n+x"])
    training = list(vocab.encode(prompt)) + list(vocab.encode(completion))
    assert training[:len(ids)] == ids and ids[-1] == vocab.diff_id
    assert vocab.decode(ids) == edit_format.lintseq_prompt(problem.instruction)


@pytest.mark.sandbox
def test_end_to_end_on_a_tiny_checkpoint(checkpoint, tmp_path):
  out = tmp_path / "out"
  assert run.main(["--checkpoint", checkpoint, "--benchmark", "humaneval", "--task_range", "0:3",
                   "--num_samples", "2", "--max_new_tokens", "16", "--batch_size", "8",
                   "--output_dir", str(out), "--workers", "2"]) == 0
  samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
  assert [s["task_id"] for s in samples] == ["HumanEval/0"] * 2 + ["HumanEval/1"] * 2 + [
      "HumanEval/2"] * 2
  assert all(s["format"] == "diffs" and isinstance(s["completion"], str) for s in samples)
  results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  assert [r["task_id"] for r in results] == [s["task_id"] for s in samples]
  assert not any(r["passed"] for r in results)  # random weights solve nothing
  summary = json.loads((out / "summary.json").read_text())
  assert summary["format"] == "lintseq" and summary["num_problems"] == 3
  assert summary["samples_per_problem"] == 2 and summary["num_samples"] == 6
  assert summary["suites"]["base"]["pass@1"] == 0.0
  assert summary["suites"]["base"]["coverage"] == [0.0, 0.0]
  assert (out / "coverage.png").read_bytes().startswith(b"\x89PNG")
  assert summary["subset"] == "0:3" and summary["min_new_tokens"] == 8
  assert summary["malformed_policy"] == "skip" and "malformed_hunks_skipped" in summary
  assert set(summary["measures"]) == {"HumanEval/0", "HumanEval/1", "HumanEval/2"}
  assert 0 <= summary["mean_parse_rate"] <= 1 and 1 <= summary["mean_distinct"] <= 2
  assert (out / "measures.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.sandbox
def test_chat_format_uses_the_checkpoints_template(checkpoint, vocab_path, tmp_path):
  config_file = vocab_path.parent / "tokenizer_config.json"
  config_file.write_text(json.dumps({"chat_template": (
      "{% for m in messages %}<|turn|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
      "{% if add_generation_prompt %}<|turn|>assistant\n{% endif %}")}))
  try:
    out = tmp_path / "out"
    assert run.main(["--checkpoint", checkpoint, "--benchmark", "humaneval", "--task_range",
                     "0:2", "--max_new_tokens", "8", "--format", "chat", "--output_dir", str(out),
                     "--workers", "2"]) == 0
  finally:
    config_file.unlink()
  samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
  assert [s["format"] for s in samples] == ["diffs", "diffs"]  # a LintSeq checkpoint
  assert json.loads((out / "summary.json").read_text())["format"] == "chat"
  with pytest.raises(SystemExit):  # no template: one clear error (argparse's exit 2)
    run.main(["--checkpoint", checkpoint, "--benchmark", "humaneval", "--format", "chat",
              "--output_dir", str(out)])


def test_chat_answers_keep_the_python_blocks():
  reply = "Here it is:\n```python\ndef f():\n    return 1\n```\nDone."
  assert run.answer(reply, "chat", "program") == {"completion": "def f():\n    return 1\n",
                                                  "response": reply}
  assert run.answer("def f(): pass", "chat", "program")["completion"] == "def f(): pass"
  assert run.answer(reply, "chat", "diffs") == {"completion": reply}


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "eval.run", *map(str, args)], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--num_samples", "0"], "--num_samples must be >= 1"),
    (["--top_p", "0"], "top_p must be in (0, 1]"),
    (["--task_range", "5:2"], "task range"),
    (["--min_p", "1"], "min_p must be in [0, 1)"),
    (["--checkpoint", "/nonexistent/run"], "no checkpoint in /nonexistent/run"),
])
def test_user_mistakes_are_one_line_errors(checkpoint, tmp_path, args, message):
  base = {"--checkpoint": checkpoint, "--benchmark": "humaneval", "--output_dir": tmp_path}
  for flag, value in zip(args[::2], args[1::2]):
    base[flag] = value
  proc = run_cli(*[x for kv in base.items() for x in kv])
  assert proc.returncode == 2
  assert message in proc.stderr and "Traceback" not in proc.stderr


def test_coverage_by_suite_uses_base_and_combined_verdicts():
  results = [
      {"task_id": "a", "base_passed": True, "passed": True},
      {"task_id": "a", "base_passed": True, "passed": False},  # plus tests failed
      {"task_id": "b", "base_passed": False, "passed": False},
      {"task_id": "b", "base_passed": True, "passed": False},
  ]
  suites = run.coverage_by_suite(results, ("base", "plus"))
  assert suites["base"]["coverage"] == [0.75, 1.0]
  assert suites["plus"]["coverage"] == [0.25, 0.5]
  assert suites["plus"]["pass@1"] == 0.25 and "pass@10" not in suites["plus"]
  humaneval = run.coverage_by_suite([{"task_id": "a", "passed": True}], ("base",))
  assert humaneval == {"base": {"pass@1": 1.0, "coverage": [1.0]}}
