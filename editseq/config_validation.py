"""Config checks that run before anything is compiled, each failing with one readable line.

`editseq.train` prints a `ConfigError` as `error: <message>` and exits with status 2, so a
typo, a mesh that does not fit the devices or a batch that does not divide costs seconds, not a
compile and a stack trace.
"""
from __future__ import annotations

import os

import jax
import ml_collections
from etils import epath
from flax import nnx

from editseq import checkpointing
from editseq import config_sections
from editseq import model as model_lib
from editseq import packing
from editseq import sharding


class ConfigError(ValueError):
  """A user-facing configuration mistake; the message is one line and names the key."""


def _fail(message: str):
  raise ConfigError(message)


def model_config(config: ml_collections.ConfigDict) -> model_lib.ModelConfig:
  try:
    return model_lib.ModelConfig.from_config_dict(config.model, config.train)
  except (ValueError, TypeError) as e:
    _fail(f"config.model: {e}")


def for_device(config: ml_collections.ConfigDict, device=None,
               recorded: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """A copy of `config` with the model's "auto" choices (attention_impl "auto", scan_layers None)
  made for `device` (default: JAX's first device), as `ModelConfig.for_device` makes them,
  keeping those of the `recorded` config of the run being resumed where they can run: what the
  input pipeline packs for, what a workdir's config records and what the step compiles.
  The packing cap on examples per row is the recorded run's too (a run packed for cuDNN on GPUs
  goes on packing that way on a TPU), unless `data.max_segments_per_row` is set."""
  device = jax.devices()[0] if device is None else device
  chosen = model_config(config).for_device(
      device, recorded.model.to_dict() if recorded is not None and "model" in recorded else None)
  if chosen.attention_impl not in chosen.attention_that_runs_on(device):
    needs = {"cudnn": "an NVIDIA GPU of compute capability 8.0 or more",
             "splash": "TPUs (elsewhere Pallas can only interpret its kernel, for tests)"}
    _fail(f"model.attention_impl={chosen.attention_impl} does not run on {device.device_kind}: "
          f"it needs {needs[chosen.attention_impl]}; use auto or xla")
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.attention_impl = chosen.attention_impl
    config.model.scan_layers = chosen.scan_layers
    resumed = recorded is not None and "data" in recorded
    if resumed and config.data.get("max_segments_per_row") is None:
      config.data.max_segments_per_row = packing.max_segments_per_row(recorded)
  cap = packing.max_segments_per_row(config)
  if chosen.attention_impl == "cudnn" and cap is not None and cap > chosen.max_segments:
    _fail(f"data.max_segments_per_row={cap} packs more examples per row than cuDNN attention "
          f"tells apart (model.max_segments={chosen.max_segments}); raise model.max_segments or "
          "use model.attention_impl=xla")
  return config


def check_values(config: ml_collections.ConfigDict) -> None:
  """Keys and value ranges of the data/optimizer/train/mesh sections
  (editseq/config_sections.py), and the warmup against the steps."""
  try:
    config_sections.check(config)
  except ValueError as e:
    _fail(str(e))
  opt, train = config.optimizer, config.train
  if opt.warmup_steps > train.steps and not train.epochs:  # else checked once derived
    _fail(f"optimizer.warmup_steps ({opt.warmup_steps}) exceeds train.steps ({train.steps})")


def check_layout(config: ml_collections.ConfigDict, model_cfg: model_lib.ModelConfig,
                 devices=None) -> None:
  """Mesh vs devices, batch vs mesh/accumulation/hosts, sequence length vs model, param shapes vs mesh."""
  devices = jax.devices() if devices is None else devices
  try:
    mesh = sharding.make_mesh(config.mesh, devices)
  except ValueError as e:
    _fail(f"config.mesh: {e}")
  batch, accum = config.data.global_batch_size, config.optimizer.grad_accum_steps
  processes = jax.process_count()
  if batch % processes:
    _fail(f"data.global_batch_size {batch} is not divisible by the {processes} processes")
  if batch % accum:
    _fail(f"data.global_batch_size {batch} is not divisible by optimizer.grad_accum_steps {accum}")
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if (batch // accum) % batch_shards:
    _fail(f"the microbatch (data.global_batch_size {batch} / grad_accum_steps {accum} = "
          f"{batch // accum}) is not divisible by the {batch_shards} batch shards "
          f"(mesh data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']})")
  if config.data.seq_len > model_cfg.max_seq_len:
    _fail(f"data.seq_len {config.data.seq_len} exceeds model.max_seq_len {model_cfg.max_seq_len}")
  try:
    sharding.state_shardings(nnx.state(model_lib.abstract_model(model_cfg), nnx.Param), mesh)
  except ValueError as e:
    _fail(f"parameters do not fit mesh {dict(mesh.shape)}: {e}")


def apply_pretrained(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with `model.from_pretrained` applied (`editseq.pretrained.resolve_config`): the
  model section, tokenizer and init_from of a pretrained folder; reads only its config and
  tokenizer files, so a wrong folder fails before any data is built."""
  source = config.model.get("from_pretrained")
  if not source:
    return config
  if not _exists(source):
    _fail(f"model.from_pretrained {source!r} does not exist")
  from editseq import pretrained, tokenizer  # pylint: disable=g-import-not-at-top
  try:
    return pretrained.resolve_config(config)
  except (FileNotFoundError, ValueError, KeyError, tokenizer.VocabularyError) as e:
    _fail(f"model.from_pretrained: {e}")


def check_paths(config: ml_collections.ConfigDict) -> None:
  """Paths the trainer opens itself (the data paths are checked by the input pipeline), and
  that init_from holds this config's model (before any data is built or step compiled)."""
  init_from = config.train.init_from
  if not init_from:
    return
  if not _exists(init_from):
    _fail(f"train.init_from {init_from!r} does not exist")
  if checkpointing.is_hf_model_dir(init_from):
    from editseq import hf_convert  # pylint: disable=g-import-not-at-top
    try:
      hf_convert.check_matches(model_config(config), hf_convert.model_config_from_hf(
          hf_convert.read_hf_config(init_from)), init_from)
    except (ValueError, KeyError) as e:
      _fail(f"train.init_from: {e}")
    return
  try:
    workdir, _ = checkpointing.resolve_step_dir(init_from)
  except FileNotFoundError as e:
    _fail(f"train.init_from: {e}")
  source = checkpointing.load_config(str(workdir))
  if source is not None and not _same_model(source, config):
    _fail(f"train.init_from {init_from!r} holds a different model than config.model")


def _same_model(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict) -> bool:
  """Same architecture (`model.ARCHITECTURE_FIELDS`, floats to a relative 1e-6): a checkpoint
  trained with cuDNN attention or unrolled layers loads into the same model run with XLA
  attention or a scan."""
  from editseq import hf_convert  # pylint: disable=g-import-not-at-top
  try:
    ca, cb = (model_lib.ModelConfig.from_config_dict(c.model) for c in (a, b))
  except ValueError:  # A config that no longer builds a model is not this model.
    return False
  return all(hf_convert.same_value(getattr(ca, f), getattr(cb, f))
             for f in model_lib.ARCHITECTURE_FIELDS)


def _exists(path: str) -> bool:
  return epath.Path(path).exists()


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """A workdir holds one run: resuming it with a different model would fail deep inside orbax."""
  previous = checkpointing.load_config(workdir)
  if previous is None or "model" not in previous:
    return
  if not _same_model(previous, config):
    _fail(f"{os.path.join(workdir, checkpointing.CONFIG_FILE)} holds a run of a different "
          "model; use a new --workdir (or init_from to finetune from that run)")


def validate_step(config: ml_collections.ConfigDict, devices=None) -> model_lib.ModelConfig:
  """The checks a train step needs (keys, values, model, mesh and batch layout on `devices`);
  returns the model config. Raises ConfigError on the first problem."""
  check_values(config)
  model_cfg = model_config(config)
  check_layout(config, model_cfg, devices)
  return model_cfg


def validate(config: ml_collections.ConfigDict, workdir: str, devices=None) -> None:
  """All checks that need no data and no compile; raises ConfigError on the first problem."""
  validate_step(config, devices)
  check_paths(config)
  check_workdir(config, workdir)
