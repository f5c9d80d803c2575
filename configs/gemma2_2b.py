"""Gemma 2 2B (2.6B parameters), the shape of Hugging Face's google/gemma-2-2b config.

Grouped-query attention (8 query / 4 key-value heads of 256), GeGLU, scaled RMSNorm before and
after each sub-layer, sqrt(d_model) embedding scaling, tied embeddings, logit soft-capping
(attention 50, final 30) and a 4096-token sliding window on every other layer (0, 2, ...).
Finetuning learning rate 5e-5 (the LintSeq paper's); parameters sharded over `fsdp`.
"""
import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  # attention_impl "auto" picks XLA attention on GPUs: cuDNN has no logit soft-capping (TPUs'
  # splash attention has, and alternates the sliding window by layer).
  config.model.update(
      vocab_size=256000,
      num_layers=26,
      d_model=2304,
      num_heads=8,
      num_kv_heads=4,
      head_dim=256,
      mlp_dim=9216,
      mlp_activation="gelu",
      norm="rmsnorm",
      norm_scale=True,
      norm_eps=1e-6,
      post_norms=True,
      tie_embeddings=True,
      embed_scale=True,
      rope_base=10000.0,
      query_scale=256 ** -0.5,
      attn_logit_softcap=50.0,
      final_logit_softcap=30.0,
      sliding_window=4096,
      sliding_window_layers="even",
      max_seq_len=8192,
  )
  config.optimizer.learning_rate = 5e-5
  config.train.remat = "dots_no_batch"
  config.mesh.data = 1
  config.mesh.fsdp = -1
  return config
