"""A tiny TinyCodeLM-shaped model for tests and smoke runs: trains on the embedded default data on CPU.

    python -m editseq.train --config=configs/test_tiny.py --workdir=/tmp/tiny

The first run builds the small default dataset and the default tokenizer (editseq.default_data,
under a minute, cached); training 20 steps then takes seconds. Four heads and a 4-divisible d_model/MLP keep it shardable on 8 simulated
devices in every mesh the tests use (8x1x1, 2x4x1, 2x2x2).
"""
from configs import base


def get_config():
  config = base.get_config()
  config.model.vocab_size = 8192  # The default tokenizer's 8192 ids (a multiple of 128).
  config.model.num_layers = 2
  config.model.d_model = 64
  config.model.num_heads = 4
  config.model.mlp_dim = 256
  config.model.max_seq_len = 128

  config.data.data_dir = "default:small"  # 300 standard-library programs, built on first use.
  config.data.seq_len = 128
  config.data.global_batch_size = 8

  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 2
  config.optimizer.schedule = "cosine"

  config.train.steps = 20
  config.train.loss_reduction = "mean"
  config.train.compute_dtype = "float32"
  config.train.eval_every = 10
  config.train.eval_steps = 2
  config.train.checkpoint_every = 10
  config.train.keep_checkpoints = 2
  return config
