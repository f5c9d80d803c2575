"""Defaults shared by every config; each config file's get_config() starts from here."""
import dataclasses
import typing

import ml_collections

from editseq import model as model_lib


def get_config() -> ml_collections.ConfigDict:
  """Returns the full default config; model configs override `model` and a few train fields."""
  config = ml_collections.ConfigDict()

  # Each model config adds its shape (see editseq/model.py ModelConfig for every field). How it
  # runs is chosen for the devices at start: cuDNN flash attention and unrolled layers on NVIDIA
  # GPUs, splash attention and scanned layers on TPUs, XLA attention and scanned layers elsewhere
  # (ModelConfig.for_device); set either to override ("xla" / "cudnn" / "splash"; True / False).
  # Every ModelConfig field but the train section's dtypes and remat can be set
  # (--config.model.KEY=VALUE); the shape fields without a default are unset here.
  # `from_pretrained`: a Hugging Face folder or an editseq checkpoint (`python -m
  # editseq.convert`) whose architecture replaces the shape fields, whose tokenizer becomes
  # data.vocab_path and whose weights train.init_from when those are "" (editseq/pretrained.py).
  config.model = ml_collections.ConfigDict()
  hints = typing.get_type_hints(model_lib.ModelConfig)
  for field in dataclasses.fields(model_lib.ModelConfig):
    if field.name in ("dtype", "param_dtype", "remat"):
      continue  # config.train's compute_dtype, param_dtype and remat.
    if field.default is dataclasses.MISSING or field.default is None:
      kind = next(t for t in typing.get_args(hints[field.name]) or (hints[field.name],)
                  if t is not type(None))
      config.model[field.name] = ml_collections.config_dict.placeholder(kind)
    else:
      config.model[field.name] = field.default
  config.model.from_pretrained = ""
  config.model.max_segments = 16  # cuDNN attention: most packed examples per row it tells apart.

  config.data = ml_collections.ConfigDict()
  config.data.task = "editseq_lintseq_instruct"
  # "" = the embedded default data (standard-library instruction pairs), "default:small" = its
  # 300-program sample; both are built on first use. Else data_gen's output folder.
  config.data.data_dir = ""
  config.data.vocab_path = ""  # "" = the embedded default tokenizer, built on first use.
  # Names of the end-of-text and padding tokens of a tokenizer.json; "" = from the files beside
  # it (generation_config.json, then tokenizer_config.json; editseq/tokenizer.py).
  config.data.eos_token = ""
  config.data.pad_token = ""
  config.data.seq_len = 1024
  config.data.global_batch_size = 512
  config.data.pack = True
  # Unpacked rows (pack=False): each batch is cut to its longest example rounded up to this
  # many positions (the reference pads each batch to its longest example); 0 = always seq_len.
  config.data.trim_to_multiple = 128
  # Most examples packed into one row. None: what the attention needs (cuDNN: model.max_segments,
  # else unlimited); a run resumed on another kind of device keeps the cap it packed with.
  config.data.max_segments_per_row = ml_collections.config_dict.placeholder(int)
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
  config.optimizer.grad_accum_steps = 1  # Microbatches per step; the global batch stays the same.

  config.train = ml_collections.ConfigDict()
  config.train.steps = 1000  # Optimizer steps (the schedule's length).
  # > 0: train this many passes over the train split instead; train.steps is then derived as
  # ceil(epochs * rows per epoch / data.global_batch_size), a row being one example when
  # data.pack is False (the reference's padded batches) and one packed row otherwise.
  config.train.epochs = 0.0
  # "sum": sum of the loss tokens' cross entropies over the global batch (the reference recipe);
  # "mean": their average. Metrics always report the per-token mean as `loss`.
  config.train.loss_reduction = "sum"
  config.train.compute_dtype = "bfloat16"
  config.train.param_dtype = "float32"  # Master weights and optimizer state.
  config.train.remat = "none"  # Per layer: "none", "full", "dots" or "dots_no_batch".
  # Positions per chunk of the fused head + loss (0 = whole sequence): logits are made, turned into
  # gradients and dropped one chunk at a time, so a 50k vocabulary's [B, T, vocab] fp32 logits
  # never exist at once, at no extra FLOPs (editseq/losses.py).
  config.train.loss_chunk_size = 256
  config.train.log_every = 1  # Steps per metrics.jsonl/TensorBoard record.
  config.train.eval_every = 200  # 0 = no eval; else eval_steps batches of data.eval_split.
  config.train.eval_steps = 10
  config.train.checkpoint_every = 200  # 0 = only at the end and on preemption.
  config.train.keep_checkpoints = 3
  # Finetune from: a run's workdir, one of its step folders, or a Hugging Face model folder.
  config.train.init_from = ""
  config.train.seed = 0  # Parameter initialisation.

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.tensor = 1
  config.mesh.dcn_data = 1
  return config
