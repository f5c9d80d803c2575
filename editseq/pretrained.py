"""Pretrained models in and out of editseq: checkpoints imported from Hugging Face folders or
GGUF files, the model section a run takes from one (`config.model.from_pretrained`), and
export back to a Hugging Face folder (`python -m editseq.convert` is the command line).

An imported checkpoint is a run folder with no training behind it:

    OUT/config.json              configs/base.py with model = the architecture, data.vocab_path =
                                 OUT/tokenizer.json (absolute), data.task = "" (no training task:
                                 eval.run asks for --format)
    OUT/checkpoints/0/state      orbax: {"step": 0, "params": ...}; no optimizer state
    OUT/tokenizer.json           the model's tokenizer with <|diff|> added (one new id)
    OUT/tokenizer_config.json    bos/eos/pad/unk names and the model's "chat_template", where a
                                 Hugging Face folder keeps them
    OUT/generation_config.json   bos/eos/pad ids (what editseq.tokenizer reads first)

so `train.init_from`, `model.from_pretrained` and `eval.run --checkpoint` take it like any run.
The embedding has a row for every id of the tokenizer: one more than the source model when
`<|diff|>` is new, initialised to the mean embedding (`hf_convert.grow_vocab`; an untied head
grows the same way); a source that pads its embedding past its tokenizer keeps its rows. An
exported folder holds the same tokenizer files, so export -> import gives the same bits.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from editseq import checkpointing
from editseq import config_sections
from editseq import hf_convert
from editseq import model as model_lib

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
# Newer transformers versions write the chat template to its own file.
CHAT_TEMPLATE_FILE = "chat_template.jinja"
MODEL_FIELDS = (*model_lib.ARCHITECTURE_FIELDS, "max_seq_len")


def is_gguf(path: str) -> bool:
  return str(path).endswith(".gguf") and os.path.isfile(path)


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  return json.loads(path.read_text()) if path.is_file() else {}


def _model_fields(cfg: model_lib.ModelConfig) -> dict[str, Any]:
  return {f: getattr(cfg, f) for f in MODEL_FIELDS}


def folder_model(path: str) -> tuple[model_lib.ModelConfig, str]:
  """(the model's config, its tokenizer path or "") of a Hugging Face folder or an editseq
  checkpoint (a run's workdir or step folder); vocab_size is the checkpoint's rows."""
  if checkpointing.is_hf_model_dir(path):
    tokenizer = pathlib.Path(path) / TOKENIZER_FILE
    return (hf_convert.model_config_from_hf(hf_convert.read_hf_config(path)),
            str(tokenizer.resolve()) if tokenizer.is_file() else "")
  workdir, _ = checkpointing.resolve_step_dir(path)
  config = checkpointing.load_config(str(workdir))
  if config is None:
    raise FileNotFoundError(f"no {checkpointing.CONFIG_FILE} in {workdir}")
  return model_lib.ModelConfig.from_config_dict(config.model), str(config.data.vocab_path)


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with `model.from_pretrained` applied: the folder's architecture and max_seq_len
  replace the model section's, its tokenizer becomes `data.vocab_path` and its weights
  `train.init_from` where those are "", and vocab_size covers the run's tokenizer (the
  embedding grows at load time). Unchanged when `from_pretrained` is ""."""
  source = config.model.get("from_pretrained")
  if not source:
    return config
  from editseq import default_data  # pylint: disable=import-outside-toplevel  # seqio/TF
  cfg, vocab_path = folder_model(source)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.update(_model_fields(cfg))
    if not config.data.vocab_path:
      config.data.vocab_path = vocab_path
    if not config.train.init_from:
      config.train.init_from = source
  if config.data.vocab_path:
    vocab = default_data.config_vocabulary(config.data)
    config.model.vocab_size = max(cfg.vocab_size, vocab.vocab_size)
  return config


def write_tokenizer_files(out: pathlib.Path, vocab, tokenizer_config: dict[str, Any],
                          generation_config: dict[str, Any]) -> None:
  """tokenizer.json (with <|diff|>), tokenizer_config.json and generation_config.json of
  `vocab` (an `HFTokenizerVocabulary`), keeping the other keys of the given dicts (the chat
  template among them) and naming the vocabulary's own eos and pad."""
  tok = vocab.tokenizer
  out.mkdir(parents=True, exist_ok=True)
  (out / TOKENIZER_FILE).write_text(tok.to_str())
  names = {"eos_token": tok.id_to_token(vocab.eos_id), "pad_token": tok.id_to_token(vocab.pad_id)}
  tokenizer_config = {**tokenizer_config, **names}
  tokenizer_config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
  tokenizer_config.pop("added_tokens_decoder", None)  # tokenizer.json lists them, <|diff|> too.
  (out / TOKENIZER_CONFIG).write_text(json.dumps(tokenizer_config, indent=2) + "\n")
  generation_config = {**generation_config, "eos_token_id": vocab.eos_id,
                       "pad_token_id": vocab.pad_id}
  (out / GENERATION_CONFIG).write_text(json.dumps(generation_config, indent=2) + "\n")


def source_tokenizer_configs(folder: pathlib.Path) -> tuple[dict, dict]:
  """(tokenizer_config, generation_config) dicts of a Hugging Face folder; a separate chat
  template file goes into tokenizer_config's "chat_template"."""
  tokenizer_config = _read_json(folder / TOKENIZER_CONFIG)
  if (folder / CHAT_TEMPLATE_FILE).is_file() and "chat_template" not in tokenizer_config:
    tokenizer_config["chat_template"] = (folder / CHAT_TEMPLATE_FILE).read_text()
  return tokenizer_config, _read_json(folder / GENERATION_CONFIG)


def _single_device_place(path: tuple, array: np.ndarray) -> jax.Array:
  del path
  return jax.device_put(array, jax.devices()[0])


def write_checkpoint(out: str, cfg: model_lib.ModelConfig,
                     convert: Callable[[model_lib.ModelConfig], dict]) -> None:
  """An imported checkpoint in `out` (config.json and step 0) of the parameters
  `convert(cfg)` gives; the tokenizer files must be in `out` already."""
  config = config_sections.default_config()
  config.model.update(_model_fields(cfg))
  config.data.vocab_path = str((pathlib.Path(out) / TOKENIZER_FILE).resolve())
  config.data.task = ""
  config.train.compute_dtype = config.train.param_dtype = "float32"
  params = convert(dataclasses.replace(cfg, param_dtype="float32"))
  checkpointing.save_config(out, config)
  saver = checkpointing.Checkpointer(out, every=0, keep=1)
  saver.save(0, {"step": jax.numpy.zeros((), jax.numpy.int32), "params": params}, {},
             force=True)
  saver.wait_until_finished()
  saver.close()


def import_model(source: str, out: str, *, eos_token: str | None = None,
                 pad_token: str | None = None, place=_single_device_place) -> model_lib.ModelConfig:
  """A Hugging Face folder or a GGUF file -> an imported checkpoint in `out`; returns its
  model config. Tensors are read, converted and placed one at a time (`place`); `eos_token` /
  `pad_token` name those tokens instead of the source's files."""
  from editseq import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  out_path = pathlib.Path(out)
  if is_gguf(source):
    from editseq import gguf_import  # pylint: disable=import-outside-toplevel
    gguf = gguf_import.GGUFModel(source)
    hf = gguf.hf_config()
    tensors = gguf.tensors()
    out_path.mkdir(parents=True, exist_ok=True)
    # The tokenizer as the GGUF holds it, then loaded back as editseq reads any tokenizer.json.
    gguf.tokenizer().save(str(out_path / TOKENIZER_FILE))
    tokenizer_config = {**gguf.special_tokens(), "model_max_length": hf["max_position_embeddings"],
                        "add_bos_token": bool(gguf.field("tokenizer.ggml.add_bos_token", False))}
    if gguf.chat_template():
      tokenizer_config["chat_template"] = gguf.chat_template()
    generation_config = {k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                         if k in hf}
    src_folder = out_path
    (out_path / TOKENIZER_CONFIG).write_text(json.dumps(tokenizer_config))
    (out_path / GENERATION_CONFIG).write_text(json.dumps(generation_config))
  elif checkpointing.is_hf_model_dir(source):
    hf = hf_convert.read_hf_config(source)
    hf_convert.model_config_from_hf(hf)  # An unsupported model is refused before any reading.
    tensors = hf_convert.read_checkpoint_tensors(source)
    src_folder = pathlib.Path(source)
    if not (src_folder / TOKENIZER_FILE).is_file():
      raise FileNotFoundError(f"{source}: no {TOKENIZER_FILE} (the imported model needs its "
                              "tokenizer)")
    tokenizer_config, generation_config = source_tokenizer_configs(src_folder)
  else:
    raise FileNotFoundError(f"{source} is neither a .gguf file nor a Hugging Face model folder "
                            "(config.json + *.safetensors)")
  vocab = tokenizer_lib.load_vocabulary(src_folder / TOKENIZER_FILE, eos_token=eos_token,
                                         pad_token=pad_token)
  write_tokenizer_files(out_path, vocab, tokenizer_config, generation_config)
  cfg = hf_convert.model_config_from_hf(hf)
  cfg = dataclasses.replace(cfg, vocab_size=max(cfg.vocab_size, vocab.vocab_size))
  write_checkpoint(out, cfg, lambda c: hf_convert.convert_state_dict(
      tensors, c, hf["model_type"], place=place))
  return cfg


def export_hf(checkpoint: str, out: str, *, max_shard_bytes: int = 2 << 30) -> str:
  """An editseq checkpoint (any run or imported one) -> a Hugging Face folder `out` that
  `transformers.AutoModelForCausalLM.from_pretrained` loads: fp32 safetensors (sharded past
  `max_shard_bytes`, with the index file), config.json and the tokenizer files. Returns the
  Hugging Face model type."""
  import safetensors.numpy  # pylint: disable=import-outside-toplevel
  from editseq import default_data  # pylint: disable=import-outside-toplevel
  model, config, vocab = checkpointing.load_for_inference(checkpoint)
  cfg = model.cfg
  model_type = hf_convert.hf_model_type(cfg)
  params = jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  del model
  out_path = pathlib.Path(out)
  out_path.mkdir(parents=True, exist_ok=True)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, tensor in hf_convert.to_hf_state_dict(params, cfg, model_type):
    if size and size + tensor.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = np.ascontiguousarray(tensor)
    size += tensor.nbytes
  files = (["model.safetensors"] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  weight_map = {}
  for file, shard in zip(files, shards):
    safetensors.numpy.save_file(shard, str(out_path / file), metadata={"format": "pt"})
    weight_map.update({name: file for name in shard})
  if len(shards) > 1:
    total = sum(t.nbytes for shard in shards for t in shard.values())
    (out_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
  vocab_path = config.data.vocab_path or default_data.default_vocab_path()
  tokenizer_config, generation_config = source_tokenizer_configs(pathlib.Path(vocab_path).parent)
  write_tokenizer_files(out_path, vocab, tokenizer_config, generation_config)
  bos = generation_config.get("bos_token_id")
  ids = {"eos_token_id": vocab.eos_id, "pad_token_id": vocab.pad_id,
         **({"bos_token_id": bos} if bos is not None else {})}
  (out_path / "config.json").write_text(
      json.dumps(hf_convert.hf_config(cfg, model_type, **ids), indent=2) + "\n")
  return model_type


def inference_config(path: str) -> ml_collections.ConfigDict:
  """The config of what `load_for_inference` loads from `path`: a run's config.json, or for a
  Hugging Face folder the default config with the folder's model and tokenizer (data.task "")."""
  if checkpointing.is_hf_model_dir(path):
    config = config_sections.default_config()
    config.data.task = ""
    config.train.compute_dtype = "float32"
    config.model.from_pretrained = str(pathlib.Path(path).resolve())
    return resolve_config(config)
  workdir, _ = checkpointing.resolve_step_dir(path)
  config = checkpointing.load_config(str(workdir))
  if config is None:
    raise FileNotFoundError(f"no {checkpointing.CONFIG_FILE} in {workdir}")
  return config


def load_hf_for_inference(path: str, *, mesh=None):
  """(model, config, vocab) of a Hugging Face folder, as `checkpointing.load_for_inference`
  gives them for a run (the embedding grown for <|diff|> as an import would)."""
  from editseq import default_data, sharding  # pylint: disable=import-outside-toplevel
  config = inference_config(path)
  cfg = model_lib.ModelConfig.from_config_dict(config.model, config.train).for_device(
      jax.devices()[0])  # how the model runs here, chosen once as it is loaded
  graphdef, abstract = nnx.split(model_lib.abstract_model(cfg), nnx.Param)
  if mesh is None:
    place = _single_device_place
  else:
    shardings = nnx.to_pure_dict(sharding.state_shardings(abstract, mesh))
    place = hf_convert.place_into(shardings)
  params = hf_convert.load_params(path, cfg, place=place)
  return nnx.merge(graphdef, params), config, default_data.config_vocabulary(config.data)

