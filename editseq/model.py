"""Decoder-only transformer (Flax NNX): TinyCodeLM by default, plus the options of Llama/Gemma 2/Phi-3.

Layers are stacked on a leading `layers` axis and run with `jax.lax.scan`, so compile time does not
grow with depth, or unrolled (slower compiles, faster steps on GPUs). Parameters are fp32
(`param_dtype`) and are cast to the compute `dtype` at use; norms, softmax, RoPE and the output
logits are computed in fp32. Attention (`editseq.attention`) is XLA einsums (any option, any
device), cuDNN flash attention (NVIDIA GPUs) or splash attention (TPUs), the last two for
training and scoring. By default both are chosen for the device once, at start-up (`ModelConfig.for_device`, called by
the trainer and `checkpointing.load_for_inference`): cuDNN and unrolled layers on NVIDIA GPUs,
splash and a scan on TPUs, XLA and a scan elsewhere; the constructor never looks at devices (a
config with "auto" left runs XLA and a scan: `ModelConfig.portable`).

Parameters carry logical axis names in their `out_sharding` metadata; `editseq.sharding` maps them
onto a mesh. Eager sharding is off so that a model can be built without a mesh (tests, CPU); the
trainer places parameters with `jax.jit(..., out_shardings=...)`.

RoPE uses the "rotate half" layout (the two halves of each head are the real and imaginary parts),
the layout of Hugging Face's Llama/OLMo/Gemma/Phi-3 weights, so they load without a permutation.

KV cache (`init_cache`): `{"k": tuple of one [batch, kv_heads, head_dim, slots] array per layer,
"v": one [batch, kv_heads, slots, head_dim] array per layer, "slot_pos": [batch, slots] int32,
"index": int32 scalar, or [batch] for one write slot per row (`cache_write`)}`. Decoding runs the
layers unrolled, so each layer's cache is its own buffer: XLA writes the new token in place and
the attention reads it with no copy (kv-heads first makes each (batch, head) a contiguous matrix;
keys are stored transposed, so that both of attention's products are plain matmuls).
`unstack_layers(model)` gives each layer its own weight arrays for the same reason, and the
sampler decodes with such a model (`for_decoding`: on the CPU, slicing the stacked weights
costs more than the matmuls they feed).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from editseq import attention
from editseq import sharding
from editseq import splash_attention

Array = jax.Array
Cache = dict[str, Array]

_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    # Every matmul's output, attention's included: splash attention's output and log-sum-exp are
    # saved by name as XLA attention's einsums are (else its forward kernel would run again).
    "dots": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.checkpoint_dots,
        jax.checkpoint_policies.save_only_these_names(splash_attention.RESIDUALS)),
    # The weight matmuls' outputs only: attention, batched over heads, is recomputed.
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


# `config.model` keys that are not ModelConfig fields: `from_pretrained` is a pretrained folder
# whose architecture the rest of the section is filled from (editseq.pretrained).
NOT_MODEL_FIELDS = ("from_pretrained",)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture and numerics of a `Transformer`. Defaults are TinyCodeLM's (OLMo-1 style)."""

  vocab_size: int
  num_layers: int
  d_model: int
  num_heads: int
  mlp_dim: int
  num_kv_heads: int = 0  # 0: num_heads (multi-head); fewer: grouped-query attention.
  head_dim: int = 0  # 0: d_model // num_heads.
  mlp_activation: str = "silu"  # "silu" (SwiGLU) or "gelu" (GeGLU, tanh approximation).
  norm: str = "layernorm"  # "layernorm" or "rmsnorm".
  norm_scale: bool = False  # Learnable per-channel scale; OLMo-1 / TinyCodeLM use none.
  norm_eps: float = 1e-5
  post_norms: bool = False  # Gemma 2: also normalise attention/MLP outputs before the residual.
  tie_embeddings: bool = True
  embed_scale: bool = False  # Gemma: multiply input embeddings by sqrt(d_model).
  rope_base: float = 10000.0
  rope_scaling_factor: float = 1.0  # Llama 3.1 "llama3" frequency scaling; 1 = off.
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192
  query_scale: float = 0.0  # 0: head_dim ** -0.5 (Gemma 2 uses query_pre_attn_scalar ** -0.5).
  attn_logit_softcap: float = 0.0  # 0 = off; Gemma 2: 50.
  final_logit_softcap: float = 0.0  # 0 = off; Gemma 2: 30.
  sliding_window: int = 0  # 0 = off; a query at p sees keys at p - window < pos <= p.
  sliding_window_layers: str = "all"  # "all" (Phi-3) or "even" (Gemma 2: layers 0, 2, 4, ...).
  max_seq_len: int = 2048  # Longest sequence the model is meant for (checked by callers).
  # "xla": einsum attention, any option and device. "cudnn": cuDNN flash attention (NVIDIA GPUs,
  # bf16/fp16). "splash": Pallas splash attention (TPUs; lengths divisible by 128, others take
  # the XLA path). Both are for training and scoring; decoding with a cache always uses "xla".
  # "auto": chosen by `for_device`.
  attention_impl: str = "auto"
  # cudnn with segment_ids: packed examples per row given their own sequence; any beyond this
  # many share the row's last one (so they can attend to each other). Its cost grows with it,
  # however many examples the rows hold (measured on an H100: docs/MEASUREMENTS.md).
  max_segments: int = 16
  init_std: float = 0.02
  dtype: str = "bfloat16"  # Compute dtype.
  param_dtype: str = "float32"
  remat: str = "none"  # "none", "full", "dots" or "dots_no_batch" (per layer).
  # True: one compiled layer run by lax.scan (compile time independent of depth); False: layers
  # unrolled (longer compiles; XLA can fuse across layers and skips the scan's buffer copies).
  # None: by device (`for_device`): unrolled on GPUs, scanned elsewhere.
  scan_layers: bool | None = None

  def __post_init__(self):
    def fail(msg):
      raise ValueError(f"ModelConfig: {msg}")

    for name in ("vocab_size", "num_layers", "d_model", "num_heads", "mlp_dim", "max_seq_len"):
      if getattr(self, name) <= 0:
        fail(f"{name} must be positive, got {getattr(self, name)}")
    if self.num_kv_heads == 0:
      object.__setattr__(self, "num_kv_heads", self.num_heads)
    if self.head_dim == 0:
      if self.d_model % self.num_heads:
        fail(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}; set head_dim")
      object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
    if self.num_kv_heads < 0 or self.num_heads % self.num_kv_heads:
      fail(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
    if self.head_dim % 2:
      fail(f"head_dim must be even for RoPE, got {self.head_dim}")
    choices = {
        "mlp_activation": ("silu", "gelu"),
        "norm": ("layernorm", "rmsnorm"),
        "sliding_window_layers": ("all", "even"),
        "remat": ("none", *_REMAT_POLICIES),
        "attention_impl": ("auto", "xla", "cudnn", "splash"),
        "dtype": ("float32", "bfloat16", "float16"),
        "param_dtype": ("float32", "bfloat16"),
    }
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        fail(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
    if self.sliding_window < 0:
      fail(f"sliding_window must be >= 0, got {self.sliding_window}")
    if self.max_segments < 1:
      fail(f"max_segments must be positive, got {self.max_segments}")
    if self.attention_impl == "cudnn" and self.cudnn_unsupported:
      fail(f"attention_impl 'cudnn' {self.cudnn_unsupported}")

  @property
  def cudnn_unsupported(self) -> str | None:
    """Why cuDNN flash attention cannot compute this model (None: it can)."""
    if self.attn_logit_softcap:
      return "does not support attn_logit_softcap"
    if self.sliding_window and self.sliding_window_layers != "all":
      return "needs the same sliding window on all layers"
    if self.dtype == "float32":
      return "needs a bfloat16 or float16 compute dtype"
    return None

  @property
  def device_independent(self) -> bool:
    """No "auto" choice is left for `for_device` to make."""
    return self.attention_impl != "auto" and self.scan_layers is not None

  @property
  def execution(self) -> str:
    """How the model runs, for logs: "attention cudnn, layers unrolled, remat none"."""
    return (f"attention {self.attention_impl}, layers "
            f"{'scanned' if self.scan_layers else 'unrolled'}, remat {self.remat}")

  def for_device(self, device: jax.Device, recorded: Mapping[str, Any] | None = None
                 ) -> "ModelConfig":
    """This config with its "auto" choices made for `device`; a resumed run's `recorded`
    choices (its config.json's model section) are kept wherever they can run on `device`, so
    that the run goes on as it started (and packs its batches the same way).

    On GPUs, unrolled layers: the scan copies each layer's weights and saved activations in and
    out of the stacks, a slower step with more temporaries (docs/MEASUREMENTS.md). On NVIDIA
    GPUs of compute capability 8.0 or more (what cuDNN flash attention needs), cuDNN attention where the model allows it. On TPUs splash attention (no [T, T]
    scores in memory) and scanned layers. Elsewhere XLA attention and scanned layers (compile
    time independent of depth)."""
    recorded = recorded or {}
    choices = {}
    if self.attention_impl == "auto":
      runs = self.attention_that_runs_on(device)
      kept = recorded.get("attention_impl")
      # A run that packed without cuDNN's cap on segments per row keeps packing that way.
      fallback = "xla" if kept == "splash" else runs[0]
      choices["attention_impl"] = kept if kept in runs else fallback
    if self.scan_layers is None:
      kept = recorded.get("scan_layers")
      choices["scan_layers"] = kept if isinstance(kept, bool) else device.platform != "gpu"
    return dataclasses.replace(self, **choices)

  def portable(self) -> "ModelConfig":
    """This config with its "auto" choices made without a device: XLA attention and scanned
    layers, which compute the model anywhere (what `for_device` chooses on a CPU). A model built
    from a config with "auto" choices left runs these; the device policy is applied once, at
    start-up, where the devices are known (`config_validation.for_device` for training,
    `checkpointing.load_for_inference` for evaluation)."""
    return dataclasses.replace(
        self, attention_impl="xla" if self.attention_impl == "auto" else self.attention_impl,
        scan_layers=True if self.scan_layers is None else self.scan_layers)

  def attention_that_runs_on(self, device: jax.Device) -> tuple[str, ...]:
    """The attention implementations that compute this model on `device`, fastest first."""
    capability = getattr(device, "compute_capability", None)  # None on compile-only devices.
    cudnn_runs = (device.platform == "gpu" and "nvidia" in device.device_kind.lower() and
                  (capability is None or
                   tuple(int(p) for p in str(capability).split(".")[:2]) >= (8, 0)) and
                  not self.cudnn_unsupported)
    splash_runs = device.platform == "tpu"
    return tuple(name for name, runs in (("cudnn", cudnn_runs), ("splash", splash_runs),
                                         ("xla", True)) if runs)

  @classmethod
  def from_config_dict(cls, model: Mapping[str, Any], train: Mapping[str, Any] | None = None
                       ) -> "ModelConfig":
    """Builds from `config.model`; `config.train` (if given) supplies dtypes and remat."""
    fields = dict(model.to_dict() if hasattr(model, "to_dict") else model)
    # Unset (None) means the default; `from_pretrained` names where the fields came from.
    fields = {k: v for k, v in fields.items() if v is not None and k not in NOT_MODEL_FIELDS}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise ValueError(f"unknown config.model keys: {', '.join(unknown)}")
    if train is not None:
      fields.update(dtype=train["compute_dtype"], param_dtype=train["param_dtype"],
                    remat=train["remat"])
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.default is dataclasses.MISSING and f.name not in fields)
    if missing:
      raise ValueError(f"missing config.model keys: {', '.join(missing)}")
    return cls(**fields)

  @property
  def window_per_layer(self) -> tuple[int, ...]:
    """Sliding-window size of each layer (0 = global attention)."""
    if not self.sliding_window:
      return (0,) * self.num_layers
    if self.sliding_window_layers == "all":
      return (self.sliding_window,) * self.num_layers
    return tuple(self.sliding_window if i % 2 == 0 else 0 for i in range(self.num_layers))


# Fields that change the function a model computes (a checkpoint must match them); the rest are
# numerics and limits that a run may choose freely.
ARCHITECTURE_FIELDS = tuple(
    f.name for f in dataclasses.fields(ModelConfig)
    if f.name not in ("max_seq_len", "init_std", "dtype", "param_dtype", "remat",
                      "attention_impl", "max_segments", "scan_layers"))


def _param(rngs: nnx.Rngs, cfg: ModelConfig, shape, axes, std: float | None) -> nnx.Param:
  """A parameter with logical axis names; std=None means ones (norm scales)."""
  dtype = jnp.dtype(cfg.param_dtype)
  if std is None:
    value = jnp.ones(shape, dtype)
  else:
    value = std * jax.random.normal(rngs.params(), shape, dtype)
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class Norm(nnx.Module):
  """LayerNorm or RMSNorm over the last axis, computed in fp32, optional scale and no bias."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.kind, self.eps = cfg.norm, cfg.norm_eps
    self.scale = _param(rngs, cfg, (cfg.d_model,), ("norm",), None) if cfg.norm_scale else None

  def __call__(self, x: Array) -> Array:
    scale = None if self.scale is None else self.scale[...]
    return _normalize(self.kind, self.eps, x, scale)

  def project(self, x: Array, *projections: tuple[str, Array]) -> tuple[Array, ...]:
    """`weight_einsum(spec, self(x), w)` for each (spec, w) of `projections`, the normalised x
    rematerialised with them: the backward keeps x (the layer's input, kept anyway) instead of
    a normalised copy per norm and layer (docs/MEASUREMENTS.md). The projections themselves
    are not run again: their backward needs only the normalised x and the weights."""
    scale = None if self.scale is None else self.scale[...]
    specs = tuple(spec for spec, _ in projections)
    return _normed_projections(self.kind, self.eps, specs, x, scale,
                               *(w for _, w in projections))


@functools.partial(jax.checkpoint, static_argnums=(0, 1, 2))
def _normed_projections(kind: str, eps: float, specs: tuple[str, ...], x: Array,
                        scale: Array | None, *weights: Array) -> tuple[Array, ...]:
  y = _normalize(kind, eps, x, scale)
  return tuple(weight_einsum(spec, y, w) for spec, w in zip(specs, weights))


@functools.partial(jax.checkpoint, static_argnums=(0, 1))
def _normalize(kind: str, eps: float, x: Array, scale: Array | None) -> Array:
  """`Norm`'s function, rematerialised: its backward keeps only x and the scale and recomputes
  the rest (elementwise work), where autodiff would keep the normalised fp32 copy and the
  reciprocal norms of every layer (docs/MEASUREMENTS.md)."""
  y = x.astype(jnp.float32)
  if kind == "layernorm":
    y = y - jnp.mean(y, axis=-1, keepdims=True)
  y = y * jax.lax.rsqrt(jnp.mean(jnp.square(y), axis=-1, keepdims=True) + eps)
  if scale is not None:
    y = y * scale.astype(jnp.float32)
  return y.astype(x.dtype)


def rope_frequencies(cfg: ModelConfig) -> Array:
  """Inverse frequencies [head_dim // 2], with Llama 3.1's smooth long-context scaling if set."""
  exponents = jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_base ** exponents)
  if cfg.rope_scaling_factor == 1.0:
    return inv_freq
  factor, low, high = cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  low_freq_wavelen = cfg.rope_original_max_len / low
  high_freq_wavelen = cfg.rope_original_max_len / high
  scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
  smooth = (cfg.rope_original_max_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
  return jnp.where(medium, smoothed, scaled)


def apply_rope(x: Array, sin: Array, cos: Array) -> Array:
  """Rotates x [B, T, N, D] by positions given as sin/cos [B, T, D/2] (rotate-half layout)."""
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  sin, cos = sin[:, :, None, :], cos[:, :, None, :]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


@jax.custom_vjp
def _logits_matmul(x: Array, w: Array) -> Array:
  """x [B, T, d] @ w [d, V] accumulated and returned in fp32.

  The backward casts the fp32 cotangent to the inputs' dtype, so that its two large matmuls run
  in bf16 like the rest of the model's backward instead of falling back to fp32 GEMMs.
  """
  return jnp.einsum("btd,dv->btv", x, w, preferred_element_type=jnp.float32)


def _logits_matmul_fwd(x, w):
  return _logits_matmul(x, w), (x, w)


def _logits_matmul_bwd(residuals, g):
  x, w = residuals
  g = g.astype(x.dtype)
  dx = jnp.einsum("btv,dv->btd", g, w, preferred_element_type=jnp.float32)
  dw = jnp.einsum("btd,btv->dv", x, g, preferred_element_type=jnp.float32)
  return dx.astype(x.dtype), dw.astype(w.dtype)


_logits_matmul.defvjp(_logits_matmul_fwd, _logits_matmul_bwd)


def head_logits(hidden: Array, head: Array, softcap: float = 0.0) -> Array:
  """fp32 logits [B, T, vocab] of final-normed `hidden` [B, T, d] through the output projection
  `head` [d, vocab] as stored (cast to the compute dtype), soft-capped when `softcap` is set.

  A pure function of its arrays, so that a loss can run it on one chunk of tokens at a time.
  """
  logits = _logits_matmul(hidden, head.astype(hidden.dtype))
  return sharding.constrain(attention.apply_softcap(logits, softcap),
                            ("act_batch", "act_length", "act_vocab"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def weight_einsum(spec: str, x: Array, w: Array) -> Array:
  """`jnp.einsum(spec, x, w)` of activations x with a weight w (the layers' projections), whose
  backward computes the weight gradient as `einsum("<x>,<out>-><w>", x, g)`: x first, result
  in w's own axis order.

  Autodiff writes that contraction with g first and a transposed result; XLA:CPU then copies g
  into a transposed layout for a plain (non-YNNPACK) dot, fusing g's elementwise producer (e.g.
  SwiGLU's backward) into that strided copy, a large share of a CPU train step
  (docs/MEASUREMENTS.md). Written this way XLA:CPU copies x instead (the input projections' x is
  4x narrower than their g) and runs the matmul in YNNPACK. Same FLOPs and values; GPU and TPU
  GEMMs take either form as it is.
  """
  return jnp.einsum(spec, x, w)


def _weight_einsum_fwd(spec, x, w):
  return jnp.einsum(spec, x, w), (x, w)


def _weight_einsum_bwd(spec, residuals, g):
  x, w = residuals
  operands, out = spec.split("->")
  x_axes, w_axes = operands.split(",")
  dx = jnp.einsum(f"{out},{w_axes}->{x_axes}", g, w)
  dw = jnp.einsum(f"{x_axes},{out}->{w_axes}", x, g)
  return dx.astype(x.dtype), dw.astype(w.dtype)


weight_einsum.defvjp(_weight_einsum_fwd, _weight_einsum_bwd)


class Attention(nnx.Module):
  """Multi-head / grouped-query attention with RoPE, no biases, optional logit soft-capping."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, h, kv, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    self.q = _param(rngs, cfg, (d, h, hd), ("embed", "heads", "head_dim"), cfg.init_std)
    self.k = _param(rngs, cfg, (d, kv, hd), ("embed", "kv_heads", "head_dim"), cfg.init_std)
    self.v = _param(rngs, cfg, (d, kv, hd), ("embed", "kv_heads", "head_dim"), cfg.init_std)
    self.o = _param(rngs, cfg, (h, hd, d), ("heads", "head_dim", "embed"), out_std)

  def __call__(self, norm: Norm, x, sin, cos, mask, kv_cache=None):
    """Attention of `norm`(x), x [B, T, d]; kv_cache = (k [B, KV, Dh, S], v [B, KV, S, Dh],
    index): this layer's cache, written at index.

    `mask`: an explicit [B, T, S] bool array (S = T, or the cache's slots) for XLA attention, or
    a `KernelMask` for the configured kernel (cuDNN or splash).
    """
    cfg = self.cfg
    dt = x.dtype
    q, k, v = norm.project(x, *(("btd,dhk->bthk", w[...].astype(dt))
                                for w in (self.q, self.k, self.v)))
    q = sharding.constrain(apply_rope(q, sin, cos), ("act_batch", "act_length", "act_heads", None))
    k = sharding.constrain(apply_rope(k, sin, cos), ("act_batch", "act_length", "act_kv_heads", None))
    v = sharding.constrain(v, ("act_batch", "act_length", "act_kv_heads", None))
    new_cache = None
    kv_major = kv_cache is not None
    if kv_major:
      k_cache, v_cache, index = kv_cache  # [B, KV, Dh, S], [B, KV, S, Dh]
      k = cache_write(k_cache, k.transpose(0, 2, 3, 1).astype(k_cache.dtype), index, 3)
      v = cache_write(v_cache, v.transpose(0, 2, 1, 3).astype(v_cache.dtype), index, 2)
      new_cache = (k, v)
      k, v = k.astype(dt), v.astype(dt)
    out = attention.attend(q, k, v, mask, cfg, kv_major=kv_major)
    return weight_einsum("bthk,hkd->btd", out, self.o[...].astype(dt)), new_cache


class GatedMLP(nnx.Module):
  """SwiGLU / GeGLU feed-forward: down(act(gate(x)) * up(x))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, m = cfg.d_model, cfg.mlp_dim
    self.activation = cfg.mlp_activation
    self.gate = _param(rngs, cfg, (d, m), ("embed", "mlp"), cfg.init_std)
    self.up = _param(rngs, cfg, (d, m), ("embed", "mlp"), cfg.init_std)
    self.down = _param(rngs, cfg, (m, d), ("mlp", "embed"),
                       cfg.init_std / math.sqrt(2 * cfg.num_layers))

  def __call__(self, norm: Norm, x: Array) -> Array:
    """The MLP of `norm`(x)."""
    dt = x.dtype
    gate, up = norm.project(x, ("btd,dm->btm", self.gate[...].astype(dt)),
                            ("btd,dm->btm", self.up[...].astype(dt)))
    return _gated_down(self.activation, gate, up, self.down[...].astype(dt))


@functools.partial(jax.checkpoint, static_argnums=(0,))
def _gated_down(activation: str, gate: Array, up: Array, down: Array) -> Array:
  """down(act(gate) * up), rematerialised: its backward keeps only gate, up and the weight and
  recomputes the elementwise rest, where autodiff kept four more [B, T, mlp] arrays per layer
  (the activation's intermediates and the product): 1.4 GB of a 30-layer, 135M-parameter step
  at 4 x 512 (docs/MEASUREMENTS.md). The down projection itself is not run again."""
  act = jax.nn.silu(gate) if activation == "silu" else jax.nn.gelu(gate, approximate=True)
  hidden = sharding.constrain(act * up, ("act_batch", "act_length", "act_mlp"))
  # Autodiff's weight gradient here, not `weight_einsum`'s: XLA:CPU then copies the gradient
  # [tokens, d] (the residual stream's, 2.7x narrower) into a transposed layout instead of the
  # recomputed product [tokens, mlp], whose strided copy, with the activation fused into it,
  # took 0.8 s of a 14 s SmolLM2-135M-shape step (4 x 512, fp32): 144 -> 150 tokens/s.
  return jnp.einsum("btm,md->btd", hidden, down)


class Block(nnx.Module):
  """Pre-norm decoder layer (optionally with Gemma 2's post-norms)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.attn_norm = Norm(cfg, rngs=rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = Norm(cfg, rngs=rngs)
    self.mlp = GatedMLP(cfg, rngs=rngs)
    self.post_attn_norm = Norm(cfg, rngs=rngs) if cfg.post_norms else None
    self.post_mlp_norm = Norm(cfg, rngs=rngs) if cfg.post_norms else None

  def __call__(self, x, sin, cos, mask, kv_cache=None):
    h, new_cache = self.attn(self.attn_norm, x, sin, cos, mask, kv_cache)
    if self.post_attn_norm is not None:
      h = self.post_attn_norm(h)
    x = x + h
    h = self.mlp(self.mlp_norm, x)
    if self.post_mlp_norm is not None:
      h = self.post_mlp_norm(h)
    x = sharding.constrain(x + h, ("act_batch", "act_length", "act_embed"))
    return x, new_cache


class Transformer(nnx.Module):
  """Decoder-only LM. `model(tokens, positions, segment_ids)` -> fp32 logits [B, T, vocab]."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    if not cfg.device_independent:
      cfg = cfg.portable()
    self.cfg = cfg
    self.embed = _param(rngs, cfg, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg.init_std)
    make_layers = nnx.vmap(lambda r: Block(cfg, rngs=r), in_axes=0, out_axes=0,
                           transform_metadata={nnx.PARTITION_NAME: "layers"})
    self.layers = make_layers(rngs.split(cfg.num_layers))
    self.final_norm = Norm(cfg, rngs=rngs)
    self.lm_head = (None if cfg.tie_embeddings else
                    _param(rngs, cfg, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg.init_std))

  def __call__(self, tokens: Array, positions: Array | None = None,
               segment_ids: Array | None = None, cache: Cache | None = None,
               return_hidden: bool = False):
    """Training/scoring when `cache` is None; otherwise appends `tokens` to the cache.

    Returns logits [B, T, vocab] (fp32), and with a cache `(logits, new_cache)`; with
    `return_hidden` (no cache) the final-normed hidden states [B, T, d] instead of the logits
    (`output_logits` maps them to logits).
    """
    cfg = self.cfg
    if return_hidden and cache is not None:
      raise ValueError("return_hidden is for training and scoring, not for decoding with a cache")
    dt = jnp.dtype(cfg.dtype)
    b, t = tokens.shape
    if positions is None:
      if cache is not None:
        raise ValueError("decoding with a cache needs explicit positions (-1 for left padding)")
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if cache is not None and segment_ids is not None:
      raise ValueError("segment_ids are not supported with a cache; left-pad with position -1")
    positions = positions.astype(jnp.int32)

    x = jnp.take(self.embed[...], tokens, axis=0).astype(dt)
    if cfg.embed_scale:
      x = x * jnp.asarray(math.sqrt(cfg.d_model), dt)
    x = sharding.constrain(x, ("act_batch", "act_length", "act_embed"))

    angles = positions[..., None].astype(jnp.float32) * rope_frequencies(cfg)
    sin, cos = jnp.sin(angles), jnp.cos(angles)

    if cache is not None:
      slot_pos = cache_write(cache["slot_pos"], positions, cache["index"], 1)
      layer_mask = attention.cache_masks(cfg, positions, slot_pos)
    else:
      layer_mask = attention.sequence_masks(cfg, positions, segment_ids)

    new_kv = []
    if cache is not None or isinstance(self.layers, nnx.List):
      # Unrolled, one layer's weights and cache at a time (decoding, or an unstacked model).
      for i, window in enumerate(cfg.window_per_layer):
        block = self.layers[i] if isinstance(self.layers, nnx.List) else _layer(self.layers, i)
        kv = None if cache is None else (cache["k"][i], cache["v"][i], cache["index"])
        x, kv = block(x, sin, cos, layer_mask(window or attention.NO_WINDOW), kv)
        new_kv.append(kv)
    else:
      x = self._run_stacked_layers(x, sin, cos, layer_mask)

    x = self.final_norm(x)
    if return_hidden:
      return x
    logits = self.output_logits(x)
    if cache is None:
      return logits
    new_cache = {"k": tuple(k for k, _ in new_kv), "v": tuple(v for _, v in new_kv),
                 "slot_pos": slot_pos, "index": cache["index"] + t}
    return logits, new_cache

  def output_logits(self, hidden: Array) -> Array:
    """fp32 logits [B, T, vocab] of final-normed `hidden` [B, T, d] (see `head_logits`)."""
    return head_logits(hidden, self.output_matrix(), self.cfg.final_logit_softcap)

  def output_matrix(self) -> Array:
    """The output projection [d, vocab] as stored (the transposed embedding when tied)."""
    return self.embed[...].T if self.lm_head is None else self.lm_head[...]

  def _run_stacked_layers(self, x, sin, cos, layer_mask):
    """Training and scoring: the stacked layers under lax.scan (or unrolled), with remat."""
    cfg = self.cfg
    windows = jnp.asarray([w or attention.NO_WINDOW for w in cfg.window_per_layer], jnp.int32)
    graphdef, layer_state = nnx.split(self.layers)

    def body(x, xs):
      state, window = xs
      x, _ = nnx.merge(graphdef, state)(x, sin, cos, layer_mask(window))
      return x, None

    if cfg.remat != "none":
      body = jax.checkpoint(body, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
    if cfg.scan_layers:
      x, _ = jax.lax.scan(body, x, (layer_state, windows))
    else:
      for i in range(cfg.num_layers):
        x, _ = body(x, jax.tree.map(lambda a, i=i: a[i], (layer_state, windows)))
    return x

  def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> Cache:
    """An empty KV cache of `max_len` slots (dtype defaults to the compute dtype)."""
    return init_cache(self.cfg, batch, max_len, dtype)


def cache_write(buffer: Array, new: Array, index: Array, axis: int) -> Array:
  """`buffer` with `new` written from slot `index` on along `axis` (the slots axis).

  A scalar `index` is the same slot for every row; an `[B]` index is one slot per row, so that
  rows of one cache can be at different lengths (the sampler's continuous batching).
  """
  if jnp.ndim(index) == 0:
    return jax.lax.dynamic_update_slice_in_dim(buffer, new, index, axis)
  if buffer.dtype == jnp.bfloat16:
    # XLA:CPU scatters bf16 by converting the whole buffer to f32 and back (twice its bytes
    # copied per write: most of a bf16 decode step); the same bits as uint16 are written in place.
    bits = lambda x: jax.lax.bitcast_convert_type(x, jnp.uint16)
    return jax.lax.bitcast_convert_type(cache_write(bits(buffer), bits(new), index, axis),
                                        jnp.bfloat16)
  return jax.vmap(lambda b, n, i: jax.lax.dynamic_update_slice_in_dim(b, n, i, axis - 1))(
      buffer, new, index)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> Cache:
  k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, max_len)
  v_shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
  dtype = jnp.dtype(dtype or cfg.dtype)
  return {
      "k": tuple(jnp.zeros(k_shape, dtype) for _ in range(cfg.num_layers)),
      "v": tuple(jnp.zeros(v_shape, dtype) for _ in range(cfg.num_layers)),
      "slot_pos": jnp.full((batch, max_len), -1, jnp.int32),
      "index": jnp.zeros((), jnp.int32),
  }


_K_CACHE_AXES = ("cache_batch", "cache_kv_heads", "head_dim", "cache_length")
_V_CACHE_AXES = ("cache_batch", "cache_kv_heads", "cache_length", "head_dim")


def cache_logical_axes(num_layers: int) -> dict[str, Any]:
  """Logical axis names of each array of a cache of `num_layers` layers (same tree as the cache)."""
  return {"k": (_K_CACHE_AXES,) * num_layers, "v": (_V_CACHE_AXES,) * num_layers,
          "slot_pos": ("cache_batch", "cache_length"), "index": ()}


def _layer(layers: Block, i: int) -> Block:
  """Layer `i` of the stacked layers (its arrays sliced out of the stacks)."""
  graphdef, state = nnx.split(layers)
  return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))


def for_decoding(model: Transformer) -> Transformer:
  """`model` as the sampler runs it: layers unstacked (`unstack_layers`) and every matrix stored
  in the compute dtype. The forward casts matrices to that dtype at use anyway, so the outputs
  are bit-identical, and a bf16 model's decode step reads half the bytes (norm scales, cast to
  fp32 at use, stay as they are)."""
  dtype = jnp.dtype(model.cfg.dtype)
  graphdef, state = nnx.split(unstack_layers(model))
  state = jax.tree.map(lambda a: a.astype(dtype) if a.ndim >= 2 else a, state)
  return nnx.merge(graphdef, state)


def unstack_layers(model: Transformer) -> Transformer:
  """`model` with each layer a separate Block owning its own arrays (a copy of its slice of the
  stacks; the other parameters are shared). Such a model computes the same function, unrolled,
  with no remat; the sampler decodes with one."""
  if isinstance(model.layers, nnx.List):
    return model
  cfg = model.cfg
  stacked = nnx.to_pure_dict(nnx.state(model.layers))
  block_graphdef, block_state = nnx.split(nnx.eval_shape(lambda: Block(cfg, rngs=nnx.Rngs(0))))
  blocks = []
  for i in range(cfg.num_layers):
    nnx.replace_by_pure_dict(block_state, jax.tree.map(lambda a, i=i: a[i], stacked))
    blocks.append(nnx.merge(block_graphdef, block_state))
  graphdef, state = nnx.split(model)
  unstacked = nnx.merge(graphdef, state)  # new module objects, same arrays
  unstacked.layers = nnx.List(blocks)
  return unstacked


def count_params(of) -> int:
  """Number of parameters `of` a `ModelConfig`, a model, or a (possibly abstract) parameter
  state or tree of arrays."""
  if isinstance(of, ModelConfig):
    of = abstract_model(of)
  if isinstance(of, nnx.Module):
    of = nnx.state(of, nnx.Param)
  return sum(math.prod(x.shape) for x in jax.tree.leaves(of))


def abstract_model(cfg: ModelConfig) -> Transformer:
  """The model with `jax.ShapeDtypeStruct` parameters (no allocation)."""
  return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))

