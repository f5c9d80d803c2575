"""The paper's TinyCodeLM-150M experiment: pretrained from scratch on web text and Python code,
then finetuned on LintSeq and on baseline data with the paper's recipe, both evaluated with its
protocol.

    python -m editseq.experiment --config=configs/experiments/paper.py --workdir=W

Stages (editseq/experiment.py) and what each takes from the paper; "ours" marks what the paper
does not state, which is our choice:
- pretrain: TinyCodeLM-150M (configs/tinycodelm_150m.py: 12 layers, d_model 768, 12 heads, MLP
  3072, vocabulary 50,304, OLMo-style) from scratch on a mixture of web text (FineWeb) and the
  Python files of The Stack, 2 epochs (the paper: 72B tokens in all, on 4 H100s). Each part is
  a data_gen run with `--variants text` (documents as they are: no parse, no LintSeq, no markdown
  extraction) into W/pretrain_data/{web,code}; editseq.train reads them as the seqio mixture
  `editseq_pretrain_web:R,editseq_pretrain_code:R` (rates from pretrain_data.<part>.rate: the
  share of each epoch's examples, a document or a row-long piece of a longer one). Ours: the
  FineWeb subset (`sample-10BT`), equal rates, and the recipe below (packed rows of 1,024
  tokens, 512 a step, AdamW b2 0.95, learning rate 6e-4, cosine decay after 2,000 warmup steps,
  weight decay 0.1, mean loss).
- data: the instruction pairs, LintSeq (5 sequences per program) and baseline variants. The
  paper's ~88.9k Python pairs from Magicoder OSS-Instruct (`ise-uiuc/Magicoder-OSS-Instruct-75K`,
  fields problem/solution, all languages) and StarCoder2 Self-OSS-Instruct
  (`bigcode/self-oss-instruct-sc2-exec-filter-50k`, fields instruction/response) are not
  released merged: by default the data stage reads them merged by the user into one JSONL file,
  data/paper_instructions.jsonl (relative to the repository root; fields instruction and
  response), or set data.extra_flags to another source (docs/PAPER.md).
- finetune: the paper's recipe (configs/tinycodelm_150m_lintseq.py: AdamW b2 0.999, learning
  rate 3e-4, weight decay 0.01, linear decay after a 0.1% warmup, 512 examples a step, each
  padded to its own row of at most 1,024 tokens, bf16, summed loss), 2 LintSeq epochs and as
  many steps for the baseline (its 10 epochs), each starting from the pretraining run's last
  checkpoint.
- eval: HumanEval+ and MBPP+ rows 100:378, n = 50 at temperature 1.0 and top-p 0.95, 512 new
  tokens (configs/experiments/base.py).
Tokenizer: data.vocab_path of both training sections, "" (the embedded 8,192-id BPE) unless set
to a tokenizer.json; TinyCodeLM used OLMo's (set both `--config.pretrain.data.vocab_path` and
`--config.finetune.data.vocab_path`; they must be the same).

Compiled here for 8 H100s and TPU v4/v5e slices, with memory, modelled step time and estimated
wall time, and the launch commands: docs/PAPER.md.
"""
import os

import ml_collections

from configs import tinycodelm_150m
from configs.experiments import base

# data_gen flags shared by both pretraining parts: documents, no instruction, long ones kept
# (rows split them), a small held-out share for the eval loss.
_DOCUMENTS = ("--instruction_key '' --raw_responses --validation_fraction 0.001 "
              "--max_program_bytes 1000000 --max_program_lines 100000 "
              "--examples_per_shard 100000")


def pretrain_recipe() -> ml_collections.ConfigDict:
  """TinyCodeLM-150M trained from scratch for 2 epochs of its mixture (recipe: ours)."""
  config = tinycodelm_150m.get_config()
  config.data.seq_len = 1024
  config.data.global_batch_size = 512
  config.data.pack = True
  config.optimizer.update(learning_rate=6e-4, schedule="cosine", warmup_steps=2000,
                          weight_decay=0.1, b1=0.9, b2=0.95)
  config.train.loss_reduction = "mean"
  config.train.epochs = 2.0  # The paper's 2 epochs; editseq.train derives the steps.
  config.train.eval_every = 2000
  config.train.eval_steps = 20
  config.train.checkpoint_every = 2000
  return config


def get_config(section=None):
  config = base.get_config()
  config.name = "paper"

  config.pretrain_data = ml_collections.ConfigDict()
  config.pretrain_data.workers = os.cpu_count() or 1
  config.pretrain_data.web = ml_collections.ConfigDict({
      "flags": "--source hf --hf_dataset HuggingFaceFW/fineweb --hf_config sample-10BT "
               "--response_key text " + _DOCUMENTS,
      "rate": 1.0})
  config.pretrain_data.code = ml_collections.ConfigDict({
      "flags": "--source hf --hf_dataset bigcode/the-stack --hf_data_dir data/python "
               "--response_key content " + _DOCUMENTS,
      "rate": 1.0})
  config.pretrain = pretrain_recipe()

  config.data.extra_flags = ("--source jsonl --input data/paper_instructions.jsonl "
                             "--instruction_key instruction --response_key response")
  config.finetune.model = tinycodelm_150m.get_config().model
  config.finetune.data.vocab_path = config.pretrain.data.vocab_path
  config.finetune.train.eval_every = 200
  config.finetune.train.checkpoint_every = 200
  return base.select(config, section)
