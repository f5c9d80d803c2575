"""TinyCodeLM-150M finetuned on LintSeq data as the LintSeq paper did: its recipe, exactly.

    python -m editseq.train --config=configs/tinycodelm_150m_lintseq.py --workdir=runs/lintseq \\
        --config.data.data_dir=data/ --config.train.init_from=PRETRAINED

AdamW (b1 0.9, b2 0.999, weight decay 0.01), learning rate 3e-4 with a linear decay after a
warmup of 0.1% of the steps, 512 examples per step, each padded to its own row of 1024 tokens
(no packing), bf16 compute, the loss summed over the batch's completion tokens, and 2 epochs over
the LintSeq data (5 edit sequences per program). configs/tinycodelm_150m_baseline.py trains the
baseline arm, 10 epochs over one example per program: the same number of optimizer steps.
`train.steps` is derived from the epochs and the data (editseq/config_sections.py says how).
"""
import ml_collections

from configs import tinycodelm_150m

# The two arms of the comparison: (seqio task, epochs).
ARMS = {"lintseq": ("editseq_lintseq_instruct", 2.0),
        "baseline": ("editseq_baseline_instruct", 10.0)}


def paper_recipe(config: ml_collections.ConfigDict, arm: str) -> ml_collections.ConfigDict:
  """`config` (a model config) with the paper's finetuning recipe for `arm` (a key of ARMS)."""
  config.data.task, config.train.epochs = ARMS[arm]
  config.data.seq_len = 1024
  config.data.global_batch_size = 512
  config.data.pack = False
  config.optimizer.update(learning_rate=3e-4, schedule="linear", warmup_steps=-1,
                          warmup_ratio=0.001, weight_decay=0.01, b1=0.9, b2=0.999)
  config.train.compute_dtype = "bfloat16"
  config.train.loss_reduction = "sum"
  return config


def get_config() -> ml_collections.ConfigDict:
  return paper_recipe(tinycodelm_150m.get_config(), "lintseq")
