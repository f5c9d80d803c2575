"""Small random pretrained models for the conversion tests: Hugging Face folders (sharded
safetensors) of each family hf_convert supports, and Llama GGUF files written with the `gguf`
package (quantized by its own quantize functions), each with a byte-level BPE tokenizer that has
no `<|diff|>` and names `<|im_start|>` as eos in tokenizer_config.json while
generation_config.json says `<|im_end|>`, as SmolLM2's GGUF-derived folder does."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from editseq import tokenizer as tokenizer_lib

VOCAB = 384  # A multiple of 128, as SmolLM2's 49,152: <|diff|> needs a new row.
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_ID = 2  # <|im_end|>
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
                 "'<|im_end|>\\n' }}{% endfor %}")


def train_tokenizer(out: pathlib.Path) -> tokenizers.Tokenizer:
  """A SmolLM2-like BPE (digits one by one, then GPT-2's split) of VOCAB ids on json's code."""
  sources = [p.read_text() for p in sorted((tokenizer_lib.stdlib_root() / "json").glob("*.py"))]
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(sources, trainers.BpeTrainer(
      vocab_size=VOCAB, special_tokens=list(SPECIALS), show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  assert tok.get_vocab_size() == VOCAB
  out.mkdir(parents=True, exist_ok=True)
  tok.save(str(out / "tokenizer.json"))
  return tok


def write_tokenizer_configs(folder: pathlib.Path) -> None:
  """The disagreeing eos of SmolLM2's GGUF-derived folder, and a chat template."""
  (folder / "tokenizer_config.json").write_text(json.dumps(
      {"eos_token": "<|im_start|>", "bos_token": "<|im_start|>", "chat_template": CHAT_TEMPLATE}))
  (folder / "generation_config.json").write_text(json.dumps(
      {"bos_token_id": 1, "eos_token_id": EOS_ID, "pad_token_id": EOS_ID}))


def hf_config(family: str, tie: bool = True):
  import transformers  # pylint: disable=import-outside-toplevel
  common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                max_position_embeddings=128, bos_token_id=1, eos_token_id=EOS_ID,
                pad_token_id=EOS_ID, tie_word_embeddings=tie)
  return {
      "llama": lambda: transformers.LlamaConfig(**common, num_hidden_layers=2,
                                                num_key_value_heads=2, rope_theta=5000.0,
                                                rms_norm_eps=float(np.float32(1e-5))),
      "olmo": lambda: transformers.OlmoConfig(**common, num_hidden_layers=2),
      "gemma2": lambda: transformers.Gemma2Config(
          **common, num_hidden_layers=2, num_key_value_heads=2, head_dim=16,
          query_pre_attn_scalar=16, sliding_window=4, attn_logit_softcapping=5.0,
          final_logit_softcapping=8.0),
      "phi3": lambda: transformers.Phi3Config(**common, num_hidden_layers=2,
                                              num_key_value_heads=2, sliding_window=6),
  }[family]()


def hf_model(family: str, tie: bool = True, seed: int = 0):
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(
      hf_config(family, tie), attn_implementation="eager").eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name:
        param.add_(0.3 * torch.randn_like(param))
  return model


def write_hf_folder(folder: pathlib.Path, family: str, tie: bool = True):
  """A Hugging Face folder (safetensors in several shards) with the tokenizer files."""
  model = hf_model(family, tie)
  model.save_pretrained(folder, safe_serialization=True, max_shard_size="100KB")
  train_tokenizer(folder)
  write_tokenizer_configs(folder)
  return model


def _interleave(w: np.ndarray, heads: int) -> np.ndarray:
  """Hugging Face's rotate-half q/k rows -> llama.cpp's interleaved rows (what its converter
  writes), head by head."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1")


def write_gguf(path: pathlib.Path, model, tok: tokenizers.Tokenizer, *, types=GGUF_TYPES,
               architecture: str = "llama") -> None:
  """`model` (a transformers Llama) as llama.cpp writes it: q/k interleaved, the matrices in
  `types` by turns (norms stay F32), the tokenizer as `gpt2` BPE metadata."""
  import gguf  # pylint: disable=import-outside-toplevel
  cfg = model.config
  writer = gguf.GGUFWriter(str(path), architecture)
  writer.add_block_count(cfg.num_hidden_layers)
  writer.add_context_length(cfg.max_position_embeddings)
  writer.add_embedding_length(cfg.hidden_size)
  writer.add_feed_forward_length(cfg.intermediate_size)
  writer.add_head_count(cfg.num_attention_heads)
  writer.add_head_count_kv(cfg.num_key_value_heads)
  writer.add_rope_freq_base(cfg.rope_theta)
  writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  writer.add_vocab_size(cfg.vocab_size)
  writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("smollm")
  vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
  writer.add_token_list([t for t, _ in vocab])
  writer.add_token_types([3 if t in SPECIALS else 1 for t, _ in vocab])
  merges = json.loads(tok.to_str())["model"]["merges"]
  writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(EOS_ID)
  writer.add_pad_token_id(EOS_ID)
  writer.add_chat_template(CHAT_TEMPLATE)
  names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
           "output_norm.weight", "lm_head.weight": "output.weight"}
  layer_names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                 "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
  matrices = 0
  for name, tensor in model.state_dict().items():
    if name == "lm_head.weight" and cfg.tie_word_embeddings:
      continue
    w = tensor.float().numpy()
    if name.startswith("model.layers."):
      _, _, i, *rest = name.split(".")
      theirs = layer_names[".".join(rest[:-1])]
      if theirs == "attn_q":
        w = _interleave(w, cfg.num_attention_heads)
      if theirs == "attn_k":
        w = _interleave(w, cfg.num_key_value_heads)
      gguf_name = f"blk.{i}.{theirs}.weight"
    else:
      gguf_name = names[name]
    kind = gguf.GGMLQuantizationType.F32
    if w.ndim == 2:
      kind = gguf.GGMLQuantizationType[types[matrices % len(types)]]
      matrices += 1
    data = gguf.quants.quantize(w, kind)
    writer.add_tensor(gguf_name, data, raw_dtype=kind if data.dtype == np.uint8 else None)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def transformers_gguf_model(path: pathlib.Path):
  """transformers' own reading of a GGUF file (its dequantization and q/k reordering) as a
  float32 model: what `from_pretrained(..., gguf_file=...)` builds, without `accelerate`."""
  import transformers  # pylint: disable=import-outside-toplevel
  from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint  # pylint: disable=import-outside-toplevel
  config = transformers.AutoConfig.for_model(**load_gguf_checkpoint(str(path))["config"])
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
  missing, unexpected = model.load_state_dict(tensors, strict=False)
  assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
  model.tie_weights()
  return model.float().eval()
