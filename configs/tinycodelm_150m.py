"""TinyCodeLM-150M: 12 layers, d_model 768, 12 heads, MLP 3072, vocabulary 50304 (151.9M parameters).

OLMo-1 style decoder (non-parametric LayerNorm, SwiGLU, RoPE, tied embeddings, no biases);
finetuning recipe of the LintSeq paper (AdamW, lr 3e-4, linear decay, batch 512 x 1024, summed
loss).
"""
import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.model.update(
      vocab_size=50304,
      num_layers=12,
      d_model=768,
      num_heads=12,
      mlp_dim=3072,
      norm="layernorm",
      norm_scale=False,
      tie_embeddings=True,
      rope_base=10000.0,
      max_seq_len=2048,
  )
  config.optimizer.learning_rate = 3e-4
  return config
