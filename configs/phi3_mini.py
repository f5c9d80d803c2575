"""Phi-3 mini (3.8B parameters), the shape of Hugging Face's microsoft/Phi-3-mini-4k-instruct config.

32 layers, d_model 3072, 32 heads, MLP 8192 (SwiGLU), scaled RMSNorm, untied embeddings, vocabulary
32064 (kept as published so that checkpoints load), a 2047-token sliding window on every layer.
Finetuning learning rate 5e-5 (the LintSeq paper's); parameters sharded over `fsdp`.
"""
import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.model.update(
      vocab_size=32064,
      num_layers=32,
      d_model=3072,
      num_heads=32,
      mlp_dim=8192,
      norm="rmsnorm",
      norm_scale=True,
      norm_eps=1e-5,
      tie_embeddings=False,
      rope_base=10000.0,
      sliding_window=2047,
      sliding_window_layers="all",
      max_seq_len=4096,
  )
  config.optimizer.learning_rate = 5e-5
  config.train.remat = "dots_no_batch"
  config.mesh.data = 1
  config.mesh.fsdp = -1
  return config
