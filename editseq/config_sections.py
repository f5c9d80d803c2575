"""The sections of a run's config as types: every key, its type, its default and its valid range.

`ModelConfig` (editseq/model.py) is the model section; the dataclasses here are the others. They
are the schema of the ml_collections config that the command lines read and override:
`default_config()` builds it from their defaults (every configs/*.py starts from it, through
configs/base.py), and `check(config)` builds them back from one, so an unknown or missing key, or
a value out of its range, is a ValueError with one line naming the key. What depends on the
devices, the mesh or the files (editseq/config_validation.py) is checked elsewhere.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import ClassVar

import ml_collections

from editseq import model as model_lib
from editseq import optimizer

LOSS_REDUCTIONS = ("sum", "mean")


def _at_least(section: str, bound: int, **values) -> None:
  for name, value in values.items():
    if value is not None and value < bound:
      raise ValueError(f"{section}.{name} must be >= {bound}, got {value}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """config.data: what is read and how it is batched."""
  NAME: ClassVar[str] = "data"
  task: str = "editseq_lintseq_instruct"
  # "" = the embedded default data (standard-library instruction pairs), "default:small" = its
  # 300-program sample; both are built on first use. Else data_gen's output folder.
  data_dir: str = ""
  vocab_path: str = ""  # "" = the embedded default tokenizer, built on first use.
  # Names of the end-of-text and padding tokens of a tokenizer.json; "" = from the files beside
  # it (generation_config.json, then tokenizer_config.json; editseq/tokenizer.py).
  eos_token: str = ""
  pad_token: str = ""
  seq_len: int = 1024
  global_batch_size: int = 512
  pack: bool = True
  # Unpacked rows (pack=False): each batch is cut to its longest example rounded up to this
  # many positions (the reference pads each batch to its longest example); 0 = always seq_len.
  trim_to_multiple: int = 128
  # Most examples packed into one row. None: what the attention needs (cuDNN: model.max_segments,
  # else unlimited); a run resumed on another kind of device keeps the cap it packed with.
  max_segments_per_row: int | None = None
  seed: int = 0
  eval_split: str = "validation"

  def __post_init__(self):
    _at_least(self.NAME, 1, seq_len=self.seq_len, global_batch_size=self.global_batch_size,
              max_segments_per_row=self.max_segments_per_row)
    _at_least(self.NAME, 0, trim_to_multiple=self.trim_to_multiple)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """config.optimizer: AdamW and its schedule (editseq/optimizer.py)."""
  NAME: ClassVar[str] = "optimizer"
  learning_rate: float = 3e-4
  schedule: str = "linear"
  warmup_steps: int = -1  # -1: use warmup_ratio.
  warmup_ratio: float = 0.001
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  grad_clip_norm: float = 1.0
  grad_accum_steps: int = 1  # Microbatches per step; the global batch stays the same.

  def __post_init__(self):
    _at_least(self.NAME, 1, grad_accum_steps=self.grad_accum_steps)
    if self.schedule not in optimizer.SCHEDULES:
      raise ValueError(f"optimizer.schedule must be one of {optimizer.SCHEDULES}, "
                       f"got {self.schedule!r}")
    if not self.learning_rate > 0:
      raise ValueError(f"optimizer.learning_rate must be > 0, got {self.learning_rate}")
    if not 0 <= self.warmup_ratio <= 1:
      raise ValueError(f"optimizer.warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
    for name in ("b1", "b2"):
      if not 0 <= getattr(self, name) < 1:
        raise ValueError(f"optimizer.{name} must be in [0, 1), got {getattr(self, name)}")
    _at_least(self.NAME, 0, weight_decay=self.weight_decay, grad_clip_norm=self.grad_clip_norm,
              eps=self.eps)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """config.train: the loop, its numerics, evaluation and checkpoints."""
  NAME: ClassVar[str] = "train"
  steps: int = 1000  # Optimizer steps (the schedule's length).
  # > 0: train this many passes over the train split instead; train.steps is then derived as
  # ceil(epochs * rows per epoch / data.global_batch_size), a row being one example when
  # data.pack is False (the reference's padded batches) and one packed row otherwise.
  epochs: float = 0.0
  # "sum": sum of the loss tokens' cross entropies over the global batch (the reference recipe);
  # "mean": their average. Metrics always report the per-token mean as `loss`.
  loss_reduction: str = "sum"
  compute_dtype: str = "bfloat16"
  param_dtype: str = "float32"  # Master weights and optimizer state.
  remat: str = "none"  # Per layer: "none", "full", "dots" or "dots_no_batch".
  # Positions per chunk of the fused head + loss (0 = whole sequence): logits are made, turned
  # into gradients and dropped one chunk at a time, so a 50k vocabulary's [B, T, vocab] fp32
  # logits never exist at once, at no extra FLOPs (editseq/losses.py).
  loss_chunk_size: int = 256
  log_every: int = 1  # Steps per metrics.jsonl/TensorBoard record.
  eval_every: int = 200  # 0 = no eval; else eval_steps batches of data.eval_split.
  eval_steps: int = 10
  checkpoint_every: int = 200  # 0 = only at the end and on preemption.
  keep_checkpoints: int = 3
  # Finetune from: a run's workdir, one of its step folders, or a Hugging Face model folder.
  init_from: str = ""
  seed: int = 0  # Parameter initialisation.

  def __post_init__(self):
    _at_least(self.NAME, 1, steps=self.steps, log_every=self.log_every,
              keep_checkpoints=self.keep_checkpoints)
    for name in ("eval_every", "checkpoint_every"):
      if getattr(self, name) < 0:
        raise ValueError(f"train.{name} must be >= 0 (0 = never), got {getattr(self, name)}")
    if self.eval_every and self.eval_steps < 1:
      raise ValueError(f"train.eval_steps must be >= 1 when train.eval_every > 0, "
                       f"got {self.eval_steps}")
    if self.loss_chunk_size < 0:
      raise ValueError(f"train.loss_chunk_size must be >= 0 (0 = whole sequence), "
                       f"got {self.loss_chunk_size}")
    if self.loss_reduction not in LOSS_REDUCTIONS:
      raise ValueError(f"train.loss_reduction must be one of {LOSS_REDUCTIONS}, "
                       f"got {self.loss_reduction!r}")
    if not (self.epochs >= 0 and math.isfinite(self.epochs)):
      raise ValueError(f"train.epochs must be >= 0 (0 = use train.steps), got {self.epochs}")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """config.mesh: devices per mesh axis, -1 for the rest (at most one; editseq/sharding.py)."""
  NAME: ClassVar[str] = "mesh"
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  dcn_data: int = 1


SECTIONS = (DataConfig, OptimizerConfig, TrainConfig, MeshConfig)


def _as_config_dict(cls, skip: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """A ConfigDict of `cls`'s fields at their defaults; a field without one, or None, is a
  placeholder of its type (unset, yet typed for --config.KEY=VALUE)."""
  section = ml_collections.ConfigDict()
  hints = typing.get_type_hints(cls)
  for field in dataclasses.fields(cls):
    if field.name in skip:
      continue
    if field.default is dataclasses.MISSING or field.default is None:
      kind = next(t for t in typing.get_args(hints[field.name]) or (hints[field.name],)
                  if t is not type(None))
      section[field.name] = ml_collections.config_dict.placeholder(kind)
    else:
      section[field.name] = field.default
  return section


def default_config() -> ml_collections.ConfigDict:
  """The full default config: every section's keys at their defaults; a model config sets the
  model's shape fields and a few train fields."""
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
  # `max_segments`: the most packed examples per row that cuDNN attention tells apart.
  config.model = _as_config_dict(model_lib.ModelConfig, skip=("dtype", "param_dtype", "remat"))
  config.model.from_pretrained = ""
  for section in SECTIONS:
    config[section.NAME] = _as_config_dict(section)
  return config


def check(config: ml_collections.ConfigDict) -> None:
  """Builds the typed sections of `config`: raises ValueError (one line naming the key) for an
  unknown section or key, a missing one, or a value out of its range. Keys are checked in every
  section before any value. The model section's keys are `ModelConfig.from_config_dict`'s to check."""
  names = ["model"] + [section.NAME for section in SECTIONS]
  for key in config.keys():
    if key not in names:
      raise ValueError(f"unknown config key '{key}' (known in 'config': "
                       f"{', '.join(sorted(names))})")
  values = {}
  for section in SECTIONS:
    if section.NAME not in config:
      raise ValueError(f"config has no '{section.NAME}' section (start from configs/base.py)")
    known = [f.name for f in dataclasses.fields(section)]
    given = config[section.NAME]
    for key in given.keys():
      if key not in known:
        raise ValueError(f"unknown config key '{section.NAME}.{key}' (known in "
                         f"'{section.NAME}': {', '.join(sorted(known))})")
    missing = [key for key in known if key not in given]
    if missing:
      raise ValueError(f"missing config.{section.NAME} keys: {', '.join(missing)}")
    values[section] = given.to_dict()
  if "model" not in config:
    raise ValueError("config has no 'model' section (start from configs/base.py)")
  for section, kwargs in values.items():
    section(**kwargs)
