"""The experiment's whole flow in a few minutes on a CPU, for the test suite: a tiny model from
scratch (configs/test_tiny.py's shape and the embedded default tokenizer) on 40 programs,
two samples on three problems of each benchmark.

    python -m editseq.experiment --config=configs/experiments/smoke.py --workdir=/tmp/smoke

Pass `--config.pretrained=FILE.gguf` (or a Hugging Face folder) to start from a model instead.
"""
from configs import test_tiny
from configs.experiments import base


def get_config(section=None):
  config = base.get_config()
  config.name = "smoke"
  config.data.max_programs = 40
  config.data.max_program_lines = 30
  config.data.validation_fraction = 0.2  # A few held-out programs for the eval loss.
  config.recipe.lintseq_epochs = 0.5

  tiny = test_tiny.get_config()
  config.finetune.model = tiny.model
  config.finetune.data.seq_len = tiny.data.seq_len
  config.finetune.data.global_batch_size = tiny.data.global_batch_size
  config.finetune.optimizer.learning_rate = tiny.optimizer.learning_rate
  config.finetune.train.compute_dtype = "float32"
  config.finetune.train.eval_every = 4
  config.finetune.train.eval_steps = 1
  config.finetune.train.checkpoint_every = 0

  config.eval.num_samples = 2
  config.eval.max_new_tokens = 32
  config.eval.batch_size = 8
  config.eval.task_ranges.humaneval_plus = "0:3"
  config.eval.task_ranges.mbpp_plus = "100:103"
  return base.select(config, section)
