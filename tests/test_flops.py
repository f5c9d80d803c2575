"""FLOP formula: hand counts, XLA's own count of the real model's train gradient, MFU and peaks."""
import os

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from editseq import flops
from editseq.model import ModelConfig, Transformer


def test_hand_count_small_shape():
  # V=10, L=2, d=4, H=2, KV=1, Dh=6 (GQA and a head_dim that is not d/H).
  cfg = ModelConfig(vocab_size=10, num_layers=2, d_model=4, num_heads=2, num_kv_heads=1,
                    head_dim=6, mlp_dim=8)
  # Per layer: q 4·12 + k 4·6 + v 4·6 + o 12·4 = 144; MLP 3·4·8 = 96. Output head 4·10 = 40.
  assert flops.matmul_params(cfg) == 2 * (144 + 96) + 40
  # T=4, causal: queries see 1, 2, 3, 4 keys -> mean 2.5; 12·H·Dh·c per layer = 12·12·2.5 = 360.
  assert flops.training_flops_per_token(cfg, 4) == 6 * 520 + 2 * 360
  # Full (PaLM): c = T = 4.
  assert flops.training_flops_per_token(cfg, 4, causal=False) == 6 * 520 + 2 * 12 * 12 * 4
  assert flops.training_flops_per_step(cfg, 3, 4) == 3 * 4 * (6 * 520 + 2 * 360)


def test_tinycodelm_150m_matmul_params():
  cfg = ModelConfig(vocab_size=50304, num_layers=12, d_model=768, num_heads=12, mlp_dim=3072)
  # 151.9M parameters minus the 12·2 + 1 norm vectors (no-scale LayerNorm has none at all).
  assert flops.matmul_params(cfg) == 12 * (4 * 768**2 + 3 * 768 * 3072) + 768 * 50304
  assert flops.matmul_params(cfg) == pytest.approx(151.9e6, rel=1e-3)


@pytest.mark.parametrize("window, seq_len, expected", [
    (0, 4, 2.5),  # 1, 2, 3, 4
    (2, 5, 1.8),  # 1, 2, 2, 2, 2
    (9, 3, 2.0),  # window wider than the sequence: 1, 2, 3
    (1, 6, 1.0),
])
def test_mean_attended_keys(window, seq_len, expected):
  assert flops.mean_attended_keys(seq_len, window) == pytest.approx(expected)
  assert flops.mean_attended_keys(seq_len, window, causal=False) == seq_len


def test_sliding_window_layers_counted_per_layer():
  kw = dict(vocab_size=64, num_layers=4, d_model=16, num_heads=2, mlp_dim=32)
  full = ModelConfig(**kw)
  gemma_like = ModelConfig(**kw, sliding_window=8, sliding_window_layers="even")
  local = ModelConfig(**kw, sliding_window=8)
  t = 64
  per_layer = lambda c: 12 * 2 * 8 * c  # 12·H·Dh·c
  assert flops.attention_flops_per_token(full, t) == 4 * per_layer(32.5)
  window_mean = flops.mean_attended_keys(t, 8)
  assert flops.attention_flops_per_token(gemma_like, t) == pytest.approx(
      2 * per_layer(32.5) + 2 * per_layer(window_mean))
  assert flops.attention_flops_per_token(local, t) == pytest.approx(4 * per_layer(window_mean))


def test_matches_xla_cost_analysis_of_model_gradient():
  """XLA's FLOP count of the real model's forward + backward agrees with the formula.

  The XLA attention path computes the dense T×T score matrix, so the comparison uses
  causal=False. Layers are unrolled (XLA counts a scan's body once, whatever its trip count).
  XLA also counts elementwise work (softmax, norms, RoPE), hence a few percent above the matmul
  count.
  """
  # Grouped-query attention, untied embeddings and head_dim != d_model / num_heads.
  cfg = ModelConfig(vocab_size=1024, num_layers=2, d_model=128, num_heads=4, num_kv_heads=2,
                    head_dim=48, mlp_dim=384, tie_embeddings=False, scan_layers=False,
                    dtype="float32")
  graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  batch, seq_len = 2, 128
  tokens = jax.random.randint(jax.random.key(1), (batch, seq_len), 0, cfg.vocab_size)

  def loss(p):
    logits = nnx.merge(graphdef, p)(tokens)
    return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1))

  cost = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()
  want = flops.training_flops_per_step(cfg, batch, seq_len, causal=False)
  assert 1.0 <= cost["flops"] / want < 1.05, cost["flops"] / want


def test_mfu():
  assert flops.mfu(1000.0, 1e9, 2, 1e12) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="num_devices"):
    flops.mfu(1000.0, 1e9, 0, 1e12)


class _FakeDevice:
  def __init__(self, kind, platform="gpu"):
    self.device_kind, self.platform = kind, platform


@pytest.mark.parametrize("kind, peak", [
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5", 459e12),
    ("TPU v5p", 459e12),
    ("TPU v6 lite", 918e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
])
def test_peak_detection(kind, peak):
  platform = "tpu" if kind.startswith("TPU") else "gpu"
  assert flops.peak_flops_per_device(_FakeDevice(kind, platform)) == peak


def test_unknown_accelerator_is_an_error():
  with pytest.raises(ValueError, match="no peak FLOP/s known for device kind 'NVIDIA T4'"):
    flops.peak_flops_per_device(_FakeDevice("NVIDIA T4"))


def test_cpu_peak_is_shared_between_simulated_devices():
  n_local = len(jax.local_devices(backend="cpu"))
  total = flops.CPU_FLOPS_PER_CORE * len(os.sched_getaffinity(0))
  assert flops.peak_flops_per_device(jax.devices("cpu")[0]) == pytest.approx(total / n_local)


def test_measure_matmul_flops_is_positive():
  assert flops.measure_matmul_flops(n=128, repeats=2) > 0
