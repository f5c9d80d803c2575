"""Parameter counts of the shipped model configs, from abstract shapes (nothing is allocated).

TinyCodeLM figures are the LintSeq paper's; the larger ones are the published checkpoints' totals
(the safetensors index `total_size` / 2 bytes of the bf16 Hugging Face releases).
"""
import importlib

import numpy as np
import pytest

from editseq import model as model_lib
from editseq import optimizer

EXPECTED = {
    "tinycodelm_150m": 151_879_680,  # "151.9M"
    "tinycodelm_400m": 454_164_480,  # "454M"
    "gemma2_2b": 2_614_341_888,  # google/gemma-2-2b
    "phi3_mini": 3_821_079_552,  # microsoft/Phi-3-mini-4k-instruct
    "phi3_medium": 13_960_238_080,  # microsoft/Phi-3-medium-4k-instruct
    "llama31_8b": 8_030_261_248,  # meta-llama/Llama-3.1-8B
}


def load(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  return config, model_lib.ModelConfig.from_config_dict(config.model, config.train)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_param_count(name):
  _, cfg = load(name)
  assert model_lib.count_params(cfg) == EXPECTED[name]


def test_tinycodelm_shapes_match_design():
  _, small = load("tinycodelm_150m")
  _, large = load("tinycodelm_400m")
  for cfg, shape in ((small, (12, 768, 12, 3072)), (large, (24, 1024, 16, 4096))):
    assert (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.mlp_dim) == shape
    assert (cfg.vocab_size, cfg.tie_embeddings, cfg.norm, cfg.norm_scale) == (
        50304, True, "layernorm", False)
    assert cfg.vocab_size % 128 == 0


@pytest.mark.parametrize("name, lr", [("tinycodelm_150m", 3e-4), ("gemma2_2b", 5e-5),
                                      ("phi3_mini", 5e-5), ("phi3_medium", 1e-5),
                                      ("llama31_8b", 1e-5)])
def test_each_config_trains_at_the_papers_peak_learning_rate(name, lr):
  """The schedule the optimizer builds from each shipped config (its warmup, decay and length)
  reaches the paper's learning rate at the end of warmup and never exceeds it."""
  config, _ = load(name)
  steps = config.train.steps
  rates = np.asarray(optimizer.learning_rate_schedule(config.optimizer, steps)(np.arange(steps)))
  assert rates.max() == pytest.approx(lr, rel=1e-6)
  assert int(rates.argmax()) == optimizer.num_warmup_steps(config.optimizer, steps)
