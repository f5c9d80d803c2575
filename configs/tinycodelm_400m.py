"""TinyCodeLM-400M: 24 layers, d_model 1024, 16 heads, MLP 4096, vocabulary 50304 (454M parameters).

Same architecture and finetuning recipe as configs/tinycodelm_150m.py.
"""
import ml_collections

from configs import tinycodelm_150m


def get_config() -> ml_collections.ConfigDict:
  config = tinycodelm_150m.get_config()
  config.model.update(num_layers=24, d_model=1024, num_heads=16, mlp_dim=4096)
  return config
