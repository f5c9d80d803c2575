"""Model FLOPs per token and model FLOPs utilisation (MFU).

Model FLOPs are the matmul work the model needs, not what the implementation happens to run:
rematerialisation, padding and masked-out attention scores do not count. Only matrix products are
counted (2 FLOPs per multiply-add); norms, RoPE, softmax, the loss and the optimizer are left out,
as in PaLM (Chowdhery et al. 2022, appendix B) and MaxText.

Per token, per layer, forward (d = d_model, H/KV = query/key-value heads, Dh = head_dim,
F = mlp_dim, V = vocab_size, c = keys a query attends to):

  projections   2·d·Dh·(H + 2·KV) + 2·H·Dh·d      (q, k, v in; o out)
  gated MLP     2·3·d·F                           (gate, up, down: SwiGLU / GeGLU)
  attention     2·H·Dh·c  (q·kᵀ)  +  2·H·Dh·c  (probs·v)

plus the output projection 2·d·V once per token. The embedding lookup is a gather, so a tied
embedding matrix is counted once, as the output projection. The backward pass costs twice the
forward (gradients with respect to activations and to weights), so

  training FLOPs/token = 6·N_matmul + 12·Dh·H·Σ_layers c_l,

where N_matmul = L·(d·Dh·(H + 2·KV) + H·Dh·d + 3·d·F) + d·V.

Attention context c: with `causal=True` (the default, MaxText's convention: causal attention
does half the score work) query t of T attends to min(t+1, window) keys, so c is that mean:
(T+1)/2 without a window, which MaxText rounds to T/2. With `causal=False` c = T in every layer,
PaLM's 12·L·H·Dh·T term, which is also what a dense masked implementation computes.
"""
from __future__ import annotations

import os
import time
from typing import Protocol, Sequence

import jax
import jax.numpy as jnp


class ModelShape(Protocol):
  """The ModelConfig fields the FLOP count reads (editseq.model.ModelConfig has them all)."""

  vocab_size: int
  num_layers: int
  d_model: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  window_per_layer: Sequence[int]  # Sliding-window size of each layer, 0 = global.


def matmul_params(cfg: ModelShape) -> int:
  """Parameters that take part in a matmul per token: all but norms, counting tied embeddings once."""
  d, dh = cfg.d_model, cfg.head_dim
  attn = d * dh * (cfg.num_heads + 2 * cfg.num_kv_heads) + cfg.num_heads * dh * d
  mlp = 3 * d * cfg.mlp_dim
  return cfg.num_layers * (attn + mlp) + d * cfg.vocab_size


def mean_attended_keys(seq_len: int, window: int = 0, *, causal: bool = True) -> float:
  """Keys a query attends to, averaged over the T positions of a sequence."""
  if seq_len <= 0:
    raise ValueError(f"seq_len must be positive, got {seq_len}")
  if not causal:
    return float(seq_len)
  w = min(window, seq_len) if window > 0 else seq_len
  # Positions t < w see t+1 keys, the remaining T-w see w.
  return (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len


def attention_flops_per_token(cfg: ModelShape, seq_len: int, *, causal: bool = True) -> float:
  """Training FLOPs per token of the score and value products (forward + backward)."""
  ctx = sum(mean_attended_keys(seq_len, w, causal=causal) for w in cfg.window_per_layer)
  return 12.0 * cfg.num_heads * cfg.head_dim * ctx


def training_flops_per_token(cfg: ModelShape, seq_len: int, *, causal: bool = True) -> float:
  """Model FLOPs of one training token (forward + backward) at sequence length `seq_len`."""
  return 6.0 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len, causal=causal)


def training_flops_per_step(
    cfg: ModelShape, batch_size: int, seq_len: int, *, causal: bool = True
) -> float:
  """Model FLOPs of one optimizer step over `batch_size` sequences of `seq_len` tokens."""
  return batch_size * seq_len * training_flops_per_token(cfg, seq_len, causal=causal)


def mfu(tokens_per_s: float, flops_per_token: float, num_devices: int, peak: float) -> float:
  """Model FLOPs utilisation: achieved model FLOP/s over the devices' combined peak."""
  if num_devices <= 0 or peak <= 0:
    raise ValueError(f"need num_devices > 0 and peak > 0, got {num_devices}, {peak}")
  return tokens_per_s * flops_per_token / (num_devices * peak)


# Dense bf16 peak FLOP/s per JAX device (one TPU chip / one GPU), from the vendors' datasheets
# (no structured sparsity). TPU v4 and v5p chips expose one JAX device each (megacore).
PEAK_FLOPS: dict[str, float] = {
    "tpu v4": 275e12,
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v6e": 918e12,
    "a100": 312e12,
    "h100 sxm": 989e12,
    "h100 pcie": 756e12,
    "h200": 989e12,
}

# CPU estimate: the fp32 rate of a large matmul measured on this project's 2-core Xeon machines
# (AVX-512; ~345 GFLOP/s for both cores, measured on these machines), per core. `measure_matmul_flops`
# measures the machine at hand; the benchmark reports both.
CPU_FLOPS_PER_CORE = 345e9 / 2

# jax.devices()[0].device_kind spellings -> PEAK_FLOPS keys, most specific first.
_KIND_ALIASES: tuple[tuple[str, str], ...] = (
    ("tpu v5 lite", "tpu v5e"),
    ("tpu v5e", "tpu v5e"),
    ("tpu v5p", "tpu v5p"),
    ("tpu v5", "tpu v5p"),
    ("tpu v6 lite", "tpu v6e"),
    ("tpu v6e", "tpu v6e"),
    ("tpu v4", "tpu v4"),
    ("h100 pcie", "h100 pcie"),
    ("h100", "h100 sxm"),
    ("h200", "h200"),
    ("a100", "a100"),
)


def _cpu_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def device_key(device_kind: str) -> str | None:
  """The PEAK_FLOPS key of an accelerator's `device_kind` (None when it is not in the table)."""
  kind = device_kind.lower()
  for alias, key in _KIND_ALIASES:
    if alias in kind:
      return key
  return None


def peak_flops_per_device(device: jax.Device | None = None) -> float:
  """Dense bf16 peak FLOP/s of one device, detected from `device.device_kind`.

  CPU devices share the host's cores: the per-core estimate times the cores, divided by the
  number of local CPU devices (8 simulated devices on 2 cores each get a quarter of a core).
  Raises ValueError for an accelerator missing from the table, rather than guess.
  """
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    n_local = max(1, len(jax.local_devices(backend="cpu")))
    return CPU_FLOPS_PER_CORE * _cpu_cores() / n_local
  key = device_key(device.device_kind)
  if key is not None:
    return PEAK_FLOPS[key]
  raise ValueError(
      f"no peak FLOP/s known for device kind {device.device_kind!r}; "
      f"known: {', '.join(sorted(PEAK_FLOPS))}")


def measure_matmul_flops(
    n: int = 2048, dtype: jnp.dtype = jnp.float32, device: jax.Device | None = None,
    repeats: int = 5,
) -> float:
  """FLOP/s of an n×n×n matmul on `device` (best of `repeats`, after a compile/warm-up run)."""
  device = device or jax.devices()[0]
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.device_put(jax.random.normal(key_a, (n, n), dtype), device)
  b = jax.device_put(jax.random.normal(key_b, (n, n), dtype), device)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n**3 / best
