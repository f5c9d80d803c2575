"""GGUF files (llama.cpp's single-file format) read as a Hugging Face checkpoint: its config,
its tensors under Hugging Face names (dequantized to fp32 on access) and its tokenizer, which
`editseq.pretrained` turns into an editseq checkpoint.

Supported: architecture `llama`; tensor types F32, F16, Q8_0, Q4_0 and Q4_1 (dequantized by the
`gguf` package); tokenizer model `gpt2` (byte-level BPE) with pre-tokenizer `gpt-2`/`default`
(GPT-2's split) or `smollm` (digits one by one, then GPT-2's split). Anything else is refused
with a `GGUFError` naming it.

llama.cpp writes each head's q and k rows in RoPE's interleaved order (row pairs (2i, 2i+1)
are one rotation) while Hugging Face's Llama rotates the two halves of the head; `_unpermute`
turns the first layout back into the second.
"""
from __future__ import annotations

import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

SUPPORTED_ARCHITECTURES = ("llama",)
SUPPORTED_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1")
SUPPORTED_PRE_TOKENIZERS = ("default", "gpt-2", "smollm")
# llama.cpp token types: 3 = control (special) and 4 = user-defined tokens are added tokens.
_CONTROL, _USER_DEFINED = 3, 4

_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                 "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}


class GGUFError(ValueError):
  """A GGUF file this importer cannot read; the message names what is unsupported."""


def hf_name(name: str) -> str:
  """The Hugging Face Llama name of a GGUF tensor name."""
  if name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[name]
  parts = name.split(".")
  if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES and parts[3] == "weight":
    return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.weight"
  raise GGUFError(f"unsupported GGUF tensor {name!r} (biases and extra tensors are not supported)")


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's interleaved q/k rows -> Hugging Face's rotate-half rows, head by head."""
  return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFModel:
  """A GGUF file's metadata, tensors and tokenizer (the file is memory-mapped, not loaded)."""

  def __init__(self, path: str | pathlib.Path):
    import gguf  # pylint: disable=import-outside-toplevel
    self._gguf = gguf
    self.path = pathlib.Path(path)
    try:
      self._reader = gguf.GGUFReader(str(path))
    except Exception as e:  # pylint: disable=broad-except  # gguf raises bare errors
      raise GGUFError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e
    self.architecture = self.field("general.architecture")
    if self.architecture not in SUPPORTED_ARCHITECTURES:
      raise GGUFError(f"{path}: unsupported GGUF architecture {self.architecture!r}; supported: "
                      f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    scaling = self.field(f"{self.architecture}.rope.scaling.type", "none")
    if scaling not in ("none", None):
      raise GGUFError(f"{path}: unsupported rope scaling {scaling!r}")
    self._tensors = {}
    for tensor in self._reader.tensors:
      kind = tensor.tensor_type.name
      if kind not in SUPPORTED_TYPES:
        raise GGUFError(f"{path}: unsupported GGUF tensor type {kind} (tensor {tensor.name}); "
                        f"supported: {', '.join(SUPPORTED_TYPES)}")
      self._tensors[hf_name(tensor.name)] = tensor

  def field(self, key: str, default: Any = None) -> Any:
    field = self._reader.fields.get(key)
    return default if field is None else field.contents()

  def _arch(self, key: str, default: Any = None) -> Any:
    return self.field(f"{self.architecture}.{key}", default)

  def hf_config(self) -> dict[str, Any]:
    """The Hugging Face `config.json` of the model (ids of bos/eos/pad included)."""
    heads = self._arch("attention.head_count")
    d = self._arch("embedding_length")
    embed = self._tensors["model.embed_tokens.weight"]
    config = dict(
        architectures=["LlamaForCausalLM"], model_type="llama",
        vocab_size=int(embed.shape[-1]), hidden_size=d,
        intermediate_size=self._arch("feed_forward_length"),
        num_hidden_layers=self._arch("block_count"), num_attention_heads=heads,
        num_key_value_heads=self._arch("attention.head_count_kv", heads),
        head_dim=self._arch("attention.key_length", d // heads),
        max_position_embeddings=self._arch("context_length", 2048),
        rope_theta=float(self._arch("rope.freq_base", 10000.0)),
        rms_norm_eps=float(self._arch("attention.layer_norm_rms_epsilon", 1e-5)),
        tie_word_embeddings="lm_head.weight" not in self._tensors,
        hidden_act="silu", attention_bias=False, mlp_bias=False, torch_dtype="float32")
    for key in ("bos", "eos", "padding"):
      value = self.field(f"tokenizer.ggml.{key}_token_id")
      if value is not None:
        config[f"{'pad' if key == 'padding' else key}_token_id"] = int(value)
    return config

  def tensors(self) -> Mapping[str, np.ndarray]:
    """Hugging Face name -> fp32 array, dequantized (and un-permuted) when read."""
    return _Tensors(self)

  def read(self, name: str) -> np.ndarray:
    tensor = self._tensors[name]
    kind = self._gguf.GGMLQuantizationType
    if tensor.tensor_type in (kind.F32, kind.F16):
      array = np.asarray(tensor.data, dtype=np.float32)
    else:
      array = self._gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
    array = array.reshape(tuple(int(n) for n in reversed(tensor.shape)))
    if name.endswith("q_proj.weight"):
      return _unpermute(array, self._arch("attention.head_count"))
    if name.endswith("k_proj.weight"):
      heads = self._arch("attention.head_count")
      return _unpermute(array, self._arch("attention.head_count_kv", heads))
    return array

  def tokenizer(self) -> tokenizers.Tokenizer:
    """The byte-level BPE of the file's `tokenizer.ggml.*` metadata."""
    model = self.field("tokenizer.ggml.model")
    if model != "gpt2":
      raise GGUFError(f"{self.path}: unsupported GGUF tokenizer model {model!r}; supported: gpt2 "
                      "(byte-level BPE)")
    pre = self.field("tokenizer.ggml.pre", "default")
    if pre not in SUPPORTED_PRE_TOKENIZERS:
      raise GGUFError(f"{self.path}: unsupported GGUF pre-tokenizer {pre!r}; supported: "
                      f"{', '.join(SUPPORTED_PRE_TOKENIZERS)}")
    tokens = self.field("tokenizer.ggml.tokens")
    types = self.field("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in self.field("tokenizer.ggml.merges") or []]
    tok = tokenizers.Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                          merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (byte_level if pre != "smollm" else pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), byte_level]))
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([tokenizers.AddedToken(t, special=kind == _CONTROL, normalized=False)
                    for t, kind in zip(tokens, types) if kind in (_CONTROL, _USER_DEFINED)])
    return tok

  def special_tokens(self) -> dict[str, str]:
    """Names of bos/eos/pad/unk (tokenizer_config.json's keys) from the metadata's ids."""
    tokens = self.field("tokenizer.ggml.tokens")
    out = {}
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("padding", "pad_token"),
                      ("unknown", "unk_token")):
      value = self.field(f"tokenizer.ggml.{key}_token_id")
      if value is not None and 0 <= int(value) < len(tokens):
        out[name] = tokens[int(value)]
    return out

  def chat_template(self) -> str | None:
    return self.field("tokenizer.chat_template")


class _Tensors(Mapping):
  def __init__(self, model: GGUFModel):
    self._model = model

  def __getitem__(self, name: str) -> np.ndarray:
    return self._model.read(name)

  def __iter__(self) -> Iterator[str]:
    return iter(self._model._tensors)  # pylint: disable=protected-access

  def __len__(self) -> int:
    return len(self._model._tensors)  # pylint: disable=protected-access

  def __contains__(self, name) -> bool:
    return name in self._model._tensors  # pylint: disable=protected-access
