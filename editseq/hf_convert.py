"""Hugging Face checkpoints (Llama, OLMo, Gemma 2, Phi-3) -> `editseq.model` configs and parameters.

Layout notes:
- HF `nn.Linear` weights are `[out, in]`; ours are `[in, ...out]` with heads split out
  (q `[d, heads, head_dim]`, o `[heads, head_dim, d]`).
- HF's RoPE for these families is "rotate half", the same layout as ours, so q/k need no
  permutation (HF's own Llama conversion script already permuted Meta's interleaved weights).
- Gemma 2's RMSNorm multiplies by `1 + weight`; ours multiplies by `scale`, so scale = 1 + weight.
- Phi-3 fuses q/k/v (`qkv_proj`, rows q then k then v) and gate/up (`gate_up_proj`, gate first).
- OLMo-1's LayerNorm has no parameters at all.

Checkpoint folders are read tensor by tensor with the `safetensors` package (no torch needed);
`pytorch_model*.bin` folders need torch. A conversion holds one host copy of the model (the
layers are written into preallocated stacks one layer at a time) and `place` moves each finished
array to its device(s), so the host copy is freed array by array.

A tokenizer larger than the checkpoint's embedding (its `<|diff|>` token added, see
`editseq.tokenizer`) grows the embedding at load time (`grow_vocab`): the new rows, and the new
columns of an untied head, are the mean of the existing ones, so the logits of every old id are
unchanged bit for bit and the new token starts as the average token.

`to_hf_state_dict` and `hf_config` are the inverse mapping, for exporting (`editseq.convert`).
"""
from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
import safetensors
from flax import nnx

from editseq import model as model_lib

SUPPORTED = ("llama", "olmo", "gemma2", "phi3")

def _require(condition: bool, model_type: str, what: str) -> None:
  if not condition:
    raise ValueError(f"unsupported {model_type} checkpoint: {what}")


def model_config_from_hf(hf: Mapping[str, Any], **overrides) -> model_lib.ModelConfig:
  """Our ModelConfig for a HF `config.json` dict; `overrides` sets dtype, remat, ..."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED:
    raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED)}")
  heads = hf["num_attention_heads"]
  fields = dict(
      vocab_size=hf["vocab_size"],
      num_layers=hf["num_hidden_layers"],
      d_model=hf["hidden_size"],
      num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or 0,
      mlp_dim=hf["intermediate_size"],
      rope_base=float(hf.get("rope_theta", 10000.0)),
      # save_pretrained drops tie_word_embeddings when it equals the base default (True).
      tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
      max_seq_len=hf.get("max_position_embeddings", 2048),
  )
  activation = hf.get("hidden_activation") or hf.get("hidden_act", "silu")
  _require(not hf.get("attention_bias") and not hf.get("mlp_bias"), model_type, "biases")
  if model_type == "olmo":
    _require(hf.get("clip_qkv") is None, model_type, "clip_qkv")
    fields.update(norm="layernorm", norm_scale=False, norm_eps=1e-5)
  else:
    fields.update(norm="rmsnorm", norm_scale=True, norm_eps=hf.get("rms_norm_eps", 1e-6))
  if model_type == "gemma2":
    _require(activation in ("gelu_pytorch_tanh", "gelu_new"), model_type, f"activation {activation}")
    activation = "gelu"
    layers = hf["num_hidden_layers"]
    layer_types = hf.get("layer_types") or [
        "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    _require(list(layer_types) == ["sliding_attention" if i % 2 == 0 else "full_attention"
                                   for i in range(layers)], model_type, "layer_types pattern")
    fields.update(post_norms=True, embed_scale=True,
                  query_scale=float(hf.get("query_pre_attn_scalar", 256)) ** -0.5,
                  attn_logit_softcap=float(hf.get("attn_logit_softcapping") or 0.0),
                  final_logit_softcap=float(hf.get("final_logit_softcapping") or 0.0),
                  sliding_window=hf.get("sliding_window") or 0, sliding_window_layers="even")
  if model_type == "phi3":
    _require(hf.get("partial_rotary_factor", 1.0) == 1.0, model_type, "partial rotary embeddings")
    fields.update(sliding_window=hf.get("sliding_window") or 0, sliding_window_layers="all")
  _require(activation == "silu" or model_type == "gemma2", model_type, f"activation {activation}")
  fields["mlp_activation"] = "silu" if activation == "silu" else "gelu"
  scaling = hf.get("rope_scaling")
  if scaling:
    rope_type = scaling.get("rope_type", scaling.get("type"))
    _require(model_type == "llama" and rope_type == "llama3", model_type,
             f"rope_scaling {rope_type!r}")
    fields.update(rope_scaling_factor=float(scaling["factor"]),
                  rope_low_freq_factor=float(scaling["low_freq_factor"]),
                  rope_high_freq_factor=float(scaling["high_freq_factor"]),
                  rope_original_max_len=int(scaling["original_max_position_embeddings"]))
  fields.update(overrides)
  return model_lib.ModelConfig(**fields)


def _norm_offset(model_type: str) -> float:
  """Gemma's RMSNorm scales by 1 + weight."""
  return 1.0 if model_type == "gemma2" else 0.0


def _layer(get: Callable[[str], np.ndarray], cfg: model_lib.ModelConfig, model_type: str,
           i: int) -> dict:
  """Our parameters of layer i (nested dict) from HF tensors."""
  d, h, kv, hd, m = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  prefix = f"model.layers.{i}."
  if model_type == "phi3":
    qkv = get(prefix + "self_attn.qkv_proj.weight")
    q, k, v = np.split(qkv, [h * hd, (h + kv) * hd])
    gate, up = np.split(get(prefix + "mlp.gate_up_proj.weight"), [m])
  else:
    q, k, v = (get(prefix + f"self_attn.{n}_proj.weight") for n in "qkv")
    gate, up = (get(prefix + f"mlp.{n}_proj.weight") for n in ("gate", "up"))
  params = {
      "attn": {"q": q.T.reshape(d, h, hd), "k": k.T.reshape(d, kv, hd),
               "v": v.T.reshape(d, kv, hd),
               "o": get(prefix + "self_attn.o_proj.weight").T.reshape(h, hd, d)},
      "mlp": {"gate": gate.T, "up": up.T, "down": get(prefix + "mlp.down_proj.weight").T},
  }
  norms = {
      "llama": {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"},
      "phi3": {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"},
      "gemma2": {"attn_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm",
                 "mlp_norm": "pre_feedforward_layernorm",
                 "post_mlp_norm": "post_feedforward_layernorm"},
      "olmo": {},
  }[model_type]
  for ours, theirs in norms.items():
    params[ours] = {"scale": get(prefix + theirs + ".weight") + _norm_offset(model_type)}
  return params


def param_shapes(cfg: model_lib.ModelConfig) -> dict:
  """Shapes of `cfg`'s parameters (a pure dict of tuples), whatever mesh the caller has set:
  under the trainer's `jax.set_mesh` the parameters' logical axis names would be read as mesh
  axes."""
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())):
    abstract = nnx.to_pure_dict(nnx.state(model_lib.abstract_model(cfg), nnx.Param))
  return jax.tree.map(lambda x: tuple(x.shape), abstract)


def grow_vocab(params: dict, vocab_size: int) -> dict:
  """`params` (numpy pure dict) with the embedding (and an untied head) grown to `vocab_size`
  rows, each new row the mean of the old ones; old rows are untouched."""
  rows = params["embed"].shape[0]
  if vocab_size < rows:
    raise ValueError(f"model.vocab_size {vocab_size} is smaller than the checkpoint's "
                     f"{rows} embedding rows")
  if vocab_size == rows:
    return params
  params = dict(params)
  embed = params["embed"]
  mean = embed.astype(np.float64).mean(axis=0).astype(embed.dtype)
  params["embed"] = np.concatenate([embed, np.broadcast_to(mean, (vocab_size - rows,
                                                                  embed.shape[1]))])
  if "lm_head" in params:
    head = params["lm_head"]
    mean = head.astype(np.float64).mean(axis=1, keepdims=True).astype(head.dtype)
    params["lm_head"] = np.concatenate(
        [head, np.broadcast_to(mean, (head.shape[0], vocab_size - rows))], axis=1)
  return params


def convert_state_dict(tensors: Mapping[str, Any], cfg: model_lib.ModelConfig,
                       model_type: str, *, place: Callable[[tuple, np.ndarray], Any] | None = None
                       ) -> dict:
  """HF tensors (name -> array-like, read on access) -> our parameters as a pure dict (see
  `nnx.to_pure_dict`), in `cfg.param_dtype`.

  The result's structure and shapes are checked against `cfg`'s model; an embedding with fewer
  rows than `cfg.vocab_size` is grown (`grow_vocab`). `place(path, array)` (path: the tuple of
  keys) turns each finished host array into what the result holds, e.g. a sharded device array.
  """
  if model_type not in SUPPORTED:
    raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED)}")
  dtype = np.dtype(jax.numpy.dtype(cfg.param_dtype))

  def get(name: str) -> np.ndarray:
    if name not in tensors:
      raise ValueError(f"{model_type} checkpoint has no tensor {name!r}")
    return np.asarray(tensors[name], dtype=np.float32)

  want = param_shapes(cfg)
  stacks = None
  for i in range(cfg.num_layers):
    layer = _layer(get, cfg, model_type, i)
    if stacks is None:
      got = jax.tree.map(lambda x: (cfg.num_layers, *x.shape), layer)
      if got != want["layers"]:
        raise ValueError(f"converted layers do not match the model config: got {got}, "
                         f"expected {want['layers']}")
      stacks = jax.tree.map(lambda x: np.empty((cfg.num_layers, *x.shape), dtype), layer)
    jax.tree.map(lambda stack, x: stack.__setitem__(i, x), stacks, layer)
  params = {"embed": get("model.embed_tokens.weight").astype(dtype), "layers": stacks}
  if cfg.norm_scale:
    params["final_norm"] = {
        "scale": (get("model.norm.weight") + _norm_offset(model_type)).astype(dtype)}
  if not cfg.tie_embeddings:
    params["lm_head"] = get("lm_head.weight").T.astype(dtype)
  if params["embed"].shape[0] < cfg.vocab_size:
    params = grow_vocab(params, cfg.vocab_size)
  got_shapes = jax.tree.map(np.shape, params)
  if got_shapes != want:
    raise ValueError(f"converted parameters do not match the model config: got {got_shapes}, "
                     f"expected {want}")
  if place is None:
    return params
  return _place_each(params, place)


def place_into(shardings: dict) -> Callable[[tuple, np.ndarray], Any]:
  """A `place` for `convert_state_dict`/`load_params`: each array onto its sharding in
  `shardings` (a nested dict shaped like the parameters)."""
  def place(path: tuple, array: np.ndarray):
    target = shardings
    for key in path:
      target = target[key]
    return jax.device_put(array, target)
  return place


def _place_each(params: dict, place: Callable[[tuple, np.ndarray], Any]) -> dict:
  """`place` applied leaf by leaf, dropping each host array once placed."""
  out: dict = {}
  for key in list(params):
    value = params.pop(key)
    if isinstance(value, dict):
      out[key] = _place_each(value, lambda path, x, key=key: place((key, *path), x))
    else:
      out[key] = place((key,), value)
      del value
  return out


def to_hf_state_dict(params: Mapping[str, Any], cfg: model_lib.ModelConfig,
                     model_type: str) -> Iterator[tuple[str, np.ndarray]]:
  """(HF tensor name, fp32 array) pairs of our parameters, the inverse of `convert_state_dict`,
  one tensor at a time."""
  d, h, kv, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  offset = _norm_offset(model_type)
  f32 = lambda x: np.asarray(x, dtype=np.float32)
  yield "model.embed_tokens.weight", f32(params["embed"])
  layers = params["layers"]
  norms = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
  if model_type == "gemma2":
    norms = {"attn_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm",
             "mlp_norm": "pre_feedforward_layernorm",
             "post_mlp_norm": "post_feedforward_layernorm"}
  for i in range(cfg.num_layers):
    prefix = f"model.layers.{i}."
    attn, mlp = layers["attn"], layers["mlp"]
    q = f32(attn["q"][i]).reshape(d, h * hd).T
    k = f32(attn["k"][i]).reshape(d, kv * hd).T
    v = f32(attn["v"][i]).reshape(d, kv * hd).T
    if model_type == "phi3":
      yield prefix + "self_attn.qkv_proj.weight", np.concatenate([q, k, v])
    else:
      yield from ((prefix + f"self_attn.{n}_proj.weight", w) for n, w in zip("qkv", (q, k, v)))
    yield prefix + "self_attn.o_proj.weight", f32(attn["o"][i]).reshape(h * hd, d).T
    gate, up = f32(mlp["gate"][i]).T, f32(mlp["up"][i]).T
    if model_type == "phi3":
      yield prefix + "mlp.gate_up_proj.weight", np.concatenate([gate, up])
    else:
      yield prefix + "mlp.gate_proj.weight", gate
      yield prefix + "mlp.up_proj.weight", up
    yield prefix + "mlp.down_proj.weight", f32(mlp["down"][i]).T
    if model_type != "olmo":
      for ours, theirs in norms.items():
        yield prefix + theirs + ".weight", f32(layers[ours]["scale"][i]) - offset
  if cfg.norm_scale:
    yield "model.norm.weight", f32(params["final_norm"]["scale"]) - offset
  if not cfg.tie_embeddings:
    yield "lm_head.weight", f32(params["lm_head"]).T


def hf_model_type(cfg: model_lib.ModelConfig) -> str:
  """The Hugging Face family that computes `cfg`'s function (ValueError if none does)."""
  if cfg.norm == "layernorm":
    family = "olmo"
  elif cfg.post_norms or cfg.embed_scale:
    family = "gemma2"
  elif cfg.sliding_window:
    family = "phi3"
  else:
    family = "llama"
  back = model_config_from_hf(hf_config(cfg, family))
  differ = [f for f in model_lib.ARCHITECTURE_FIELDS
            if not same_value(getattr(back, f), getattr(cfg, f))]
  if differ:
    raise ValueError(f"no supported Hugging Face architecture computes this model "
                     f"({family} differs in {', '.join(differ)})")
  return family


_HF_CLASSES = {"llama": "LlamaForCausalLM", "olmo": "OlmoForCausalLM",
               "gemma2": "Gemma2ForCausalLM", "phi3": "Phi3ForCausalLM"}


def hf_config(cfg: model_lib.ModelConfig, model_type: str, **extra) -> dict[str, Any]:
  """A Hugging Face `config.json` dict for `cfg` as `model_type` (`extra`: token ids, ...)."""
  hf = dict(
      architectures=[_HF_CLASSES[model_type]], model_type=model_type,
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
      max_position_embeddings=cfg.max_seq_len, rope_theta=cfg.rope_base,
      tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, torch_dtype="float32",
      hidden_act="silu" if cfg.mlp_activation == "silu" else "gelu_pytorch_tanh")
  if model_type == "olmo":
    hf.update(clip_qkv=None)
  else:
    hf.update(rms_norm_eps=cfg.norm_eps, mlp_bias=False)
  if model_type == "gemma2":
    hf.update(hidden_activation=hf["hidden_act"],
              query_pre_attn_scalar=cfg.query_scale ** -2 if cfg.query_scale else cfg.head_dim,
              attn_logit_softcapping=cfg.attn_logit_softcap or None,
              final_logit_softcapping=cfg.final_logit_softcap or None,
              sliding_window=cfg.sliding_window or None)
  if model_type == "phi3":
    hf.update(sliding_window=cfg.sliding_window or None)
  if cfg.rope_scaling_factor != 1.0:
    hf["rope_scaling"] = dict(rope_type="llama3", factor=cfg.rope_scaling_factor,
                              low_freq_factor=cfg.rope_low_freq_factor,
                              high_freq_factor=cfg.rope_high_freq_factor,
                              original_max_position_embeddings=cfg.rope_original_max_len)
  hf.update(extra)
  return hf


def same_value(a: Any, b: Any) -> bool:
  """Config values equal, floats to a relative 1e-6 (a float32 1e-5 stored as
  9.999999747378752e-06 is 1e-5)."""
  if isinstance(a, float) or isinstance(b, float):
    try:
      return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=0.0)
    except (TypeError, ValueError):
      return False
  return a == b


class SafetensorsFolder(Mapping):
  """The tensors of a folder's `*.safetensors` files (one or sharded), each read on access."""

  def __init__(self, path: str | pathlib.Path):
    self._files = {}
    self._where: dict[str, str] = {}
    for file in sorted(pathlib.Path(path).glob("*.safetensors")):
      try:
        handle = safetensors.safe_open(str(file), framework="np")
      except safetensors.SafetensorError as e:
        raise ValueError(f"{file}: not a readable safetensors file ({e})") from e
      self._files[str(file)] = handle
      self._where.update({name: str(file) for name in handle.keys()})

  def __getitem__(self, name: str) -> np.ndarray:
    return self._files[self._where[name]].get_tensor(name)

  def __iter__(self):
    return iter(self._where)

  def __len__(self) -> int:
    return len(self._where)


def read_checkpoint_tensors(path: str | pathlib.Path) -> Mapping[str, Any]:
  """All tensors of a HF model folder (safetensors, read lazily; else pytorch_model*.bin
  through torch)."""
  path = pathlib.Path(path)
  if any(path.glob("*.safetensors")):
    return SafetensorsFolder(path)
  bins = sorted(path.glob("pytorch_model*.bin"))
  if not bins:
    raise FileNotFoundError(f"{path}: no *.safetensors or pytorch_model*.bin weights")
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"{path} holds PyTorch .bin weights: install torch to read them, or "
                      "re-save the model with safetensors") from e
  tensors: dict[str, Any] = {}
  for file in bins:
    state = torch.load(file, map_location="cpu", weights_only=True)
    tensors.update({k: v.float().numpy() for k, v in state.items()})
  return tensors


def read_hf_config(path: str | pathlib.Path) -> dict[str, Any]:
  return json.loads((pathlib.Path(path) / "config.json").read_text())


def check_matches(cfg: model_lib.ModelConfig, from_checkpoint: model_lib.ModelConfig,
                  where: str) -> None:
  """ValueError naming each architecture field in which `cfg` differs from the checkpoint's; a
  larger vocab_size is fine (the embedding grows)."""
  diffs = [f for f in model_lib.ARCHITECTURE_FIELDS
           if not same_value(getattr(cfg, f), getattr(from_checkpoint, f))
           and not (f == "vocab_size" and cfg.vocab_size > from_checkpoint.vocab_size)]
  if diffs:
    text = ", ".join(f"{f}: config {getattr(cfg, f)!r} vs checkpoint "
                     f"{getattr(from_checkpoint, f)!r}" for f in diffs)
    raise ValueError(f"{where} does not match the model config ({text})")


def load_params(path: str | pathlib.Path, cfg: model_lib.ModelConfig,
                place: Callable[[tuple, np.ndarray], Any] | None = None) -> dict:
  """Parameters (pure dict) of the HF model folder `path`, checked against the run's `cfg`
  (the embedding grown to `cfg.vocab_size` when that is larger)."""
  hf = read_hf_config(path)
  check_matches(cfg, model_config_from_hf(hf), str(path))
  return convert_state_dict(read_checkpoint_tensors(path), cfg, hf["model_type"], place=place)


def from_torch_model(hf_model, **overrides) -> tuple[model_lib.ModelConfig, dict]:
  """(ModelConfig, parameters) of an in-memory `transformers` model."""
  hf = hf_model.config.to_dict()
  cfg = model_config_from_hf(hf, **overrides)
  tensors = {k: v.detach().float().cpu().numpy() for k, v in hf_model.state_dict().items()}
  return cfg, convert_state_dict(tensors, cfg, hf["model_type"])
