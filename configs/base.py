"""Defaults shared by every config; each config file's get_config() starts from here."""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the full default config; model configs override `model` and a few train fields."""
  config = ml_collections.ConfigDict()

  # Filled by each model config (see editseq/model.py ModelConfig for the meaning of each field).
  config.model = ml_collections.ConfigDict()

  config.data = ml_collections.ConfigDict()
  config.data.task = "editseq_lintseq_instruct"
  config.data.data_dir = ""  # "" = the embedded default data, built on first use.
  config.data.vocab_path = ""  # "" = the embedded default tokenizer, built on first use.
  config.data.seq_len = 1024
  config.data.global_batch_size = 512
  config.data.pack = True
  config.data.seed = 0
  config.data.eval_split = "validation"

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 3e-4
  config.optimizer.schedule = "linear"
  config.optimizer.warmup_steps = -1  # -1: use warmup_ratio.
  config.optimizer.warmup_ratio = 0.001
  config.optimizer.weight_decay = 0.01
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.95
  config.optimizer.eps = 1e-8
  config.optimizer.grad_clip_norm = 1.0
  config.optimizer.grad_accum_steps = 1

  config.train = ml_collections.ConfigDict()
  config.train.steps = 1000
  config.train.loss_reduction = "sum"
  config.train.compute_dtype = "bfloat16"
  config.train.param_dtype = "float32"
  config.train.remat = "none"
  config.train.log_every = 1
  config.train.eval_every = 200
  config.train.eval_steps = 10
  config.train.checkpoint_every = 200
  config.train.keep_checkpoints = 3
  config.train.init_from = ""
  config.train.seed = 0

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.tensor = 1
  config.mesh.dcn_data = 1
  return config
