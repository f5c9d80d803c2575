"""Phi-3 medium (14B parameters), the shape of Hugging Face's microsoft/Phi-3-medium-4k-instruct config.

Phi-3 mini's architecture at 40 layers, d_model 5120, 40 query / 10 key-value heads, MLP 17920.
Finetuning learning rate 1e-5 (the LintSeq paper's); parameters sharded over `fsdp`, full remat.
"""
import ml_collections

from configs import phi3_mini


def get_config() -> ml_collections.ConfigDict:
  config = phi3_mini.get_config()
  config.model.update(num_layers=40, d_model=5120, num_heads=40, num_kv_heads=10, mlp_dim=17920)
  config.optimizer.learning_rate = 1e-5
  config.train.remat = "full"
  return config
