"""Hugging Face checkpoints (Llama, OLMo, Gemma 2, Phi-3) -> `editseq.model` configs and parameters.

Layout notes:
- HF `nn.Linear` weights are `[out, in]`; ours are `[in, ...out]` with heads split out
  (q `[d, heads, head_dim]`, o `[heads, head_dim, d]`).
- HF's RoPE for these families is "rotate half", the same layout as ours, so q/k need no
  permutation (HF's own Llama conversion script already permuted Meta's interleaved weights).
- Gemma 2's RMSNorm multiplies by `1 + weight`; ours multiplies by `scale`, so scale = 1 + weight.
- Phi-3 fuses q/k/v (`qkv_proj`, rows q then k then v) and gate/up (`gate_up_proj`, gate first).
- OLMo-1's LayerNorm has no parameters at all.

Checkpoint folders are read from safetensors with a small memory-mapped reader (no torch needed);
`pytorch_model*.bin` folders need torch.
"""
from __future__ import annotations

import json
import pathlib
import struct
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from editseq import model as model_lib

SUPPORTED = ("llama", "olmo", "gemma2", "phi3")

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


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


def convert_state_dict(tensors: Mapping[str, Any], cfg: model_lib.ModelConfig,
                       model_type: str) -> dict:
  """HF tensors (name -> array-like) -> our parameters as a pure dict (see `nnx.to_pure_dict`).

  The result's structure and shapes are checked against `cfg`'s model.
  """
  if model_type not in SUPPORTED:
    raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED)}")

  def get(name: str) -> np.ndarray:
    if name not in tensors:
      raise ValueError(f"{model_type} checkpoint has no tensor {name!r}")
    return np.asarray(tensors[name], dtype=np.float32)

  layers = [_layer(get, cfg, model_type, i) for i in range(cfg.num_layers)]
  params = {
      "embed": get("model.embed_tokens.weight"),
      "layers": jax.tree.map(lambda *xs: np.stack(xs), *layers),
  }
  if cfg.norm_scale:
    params["final_norm"] = {"scale": get("model.norm.weight") + _norm_offset(model_type)}
  if not cfg.tie_embeddings:
    params["lm_head"] = get("lm_head.weight").T
  expected = nnx.to_pure_dict(nnx.state(model_lib.abstract_model(cfg), nnx.Param))
  got_shapes = jax.tree.map(np.shape, params)
  want_shapes = jax.tree.map(lambda x: tuple(x.shape), expected)
  if got_shapes != want_shapes:
    raise ValueError(f"converted parameters do not match the model config: got {got_shapes}, "
                     f"expected {want_shapes}")
  return jax.tree.map(lambda x: x.astype(cfg.param_dtype), params)


def read_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Memory-mapped arrays of one .safetensors file (8-byte header size, JSON header, raw data)."""
  data = np.memmap(path, dtype=np.uint8, mode="r")
  (header_size,) = struct.unpack("<Q", data[:8].tobytes())
  header = json.loads(data[8:8 + header_size].tobytes())
  header.pop("__metadata__", None)
  base = 8 + header_size
  tensors = {}
  for name, info in header.items():
    if info["dtype"] not in _SAFETENSORS_DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    raw = data[base + start:base + end]
    tensors[name] = raw.view(_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
  return tensors


def read_checkpoint_tensors(path: str | pathlib.Path) -> dict[str, Any]:
  """All tensors of a HF model folder (safetensors, else pytorch_model*.bin through torch)."""
  path = pathlib.Path(path)
  tensors: dict[str, Any] = {}
  files = sorted(path.glob("*.safetensors"))
  for file in files:
    tensors.update(read_safetensors(file))
  if files:
    return tensors
  bins = sorted(path.glob("pytorch_model*.bin"))
  if not bins:
    raise FileNotFoundError(f"{path}: no *.safetensors or pytorch_model*.bin weights")
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"{path} holds PyTorch .bin weights: install torch to read them, or "
                      "re-save the model with safetensors") from e
  for file in bins:
    state = torch.load(file, map_location="cpu", weights_only=True)
    tensors.update({k: v.float().numpy() for k, v in state.items()})
  return tensors


def read_hf_config(path: str | pathlib.Path) -> dict[str, Any]:
  return json.loads((pathlib.Path(path) / "config.json").read_text())


def load_params(path: str | pathlib.Path, cfg: model_lib.ModelConfig) -> dict:
  """Parameters (pure dict) of the HF model folder `path`, checked against the run's `cfg`."""
  hf = read_hf_config(path)
  from_hf = model_config_from_hf(hf)
  arch_fields = [f for f in model_lib.ARCHITECTURE_FIELDS
                 if getattr(from_hf, f) != getattr(cfg, f)]
  if arch_fields:
    diffs = ", ".join(f"{f}: config {getattr(cfg, f)!r} vs checkpoint {getattr(from_hf, f)!r}"
                      for f in arch_fields)
    raise ValueError(f"{path} does not match the model config ({diffs})")
  return convert_state_dict(read_checkpoint_tensors(path), cfg, hf["model_type"])


def from_torch_model(hf_model, **overrides) -> tuple[model_lib.ModelConfig, dict]:
  """(ModelConfig, parameters) of an in-memory `transformers` model."""
  hf = hf_model.config.to_dict()
  cfg = model_config_from_hf(hf, **overrides)
  tensors = {k: v.detach().float().cpu().numpy() for k, v in hf_model.state_dict().items()}
  return cfg, convert_state_dict(tensors, cfg, hf["model_type"])
