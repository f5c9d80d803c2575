"""Llama 3.1 8B, the shape of Hugging Face's meta-llama/Llama-3.1-8B config.

32 layers, d_model 4096, 32 query / 8 key-value heads, MLP 14336 (SwiGLU), scaled RMSNorm, untied
embeddings, vocabulary 128256, RoPE base 500000 with the "llama3" frequency scaling (factor 8).
Finetuning learning rate 1e-5 (the LintSeq paper's); parameters sharded over `fsdp`, full remat.
"""
import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.model.update(
      vocab_size=128256,
      num_layers=32,
      d_model=4096,
      num_heads=32,
      num_kv_heads=8,
      mlp_dim=14336,
      norm="rmsnorm",
      norm_scale=True,
      norm_eps=1e-5,
      tie_embeddings=False,
      rope_base=500000.0,
      rope_scaling_factor=8.0,
      rope_low_freq_factor=1.0,
      rope_high_freq_factor=4.0,
      rope_original_max_len=8192,
      max_seq_len=131072,
  )
  config.optimizer.learning_rate = 1e-5
  config.train.remat = "full"
  config.mesh.data = 1
  config.mesh.fsdp = -1
  return config
