"""editseq.perf.roofline: kernels, FLOPs and bytes read from compiled HLO, and the time model."""
import importlib

import jax
import pytest

from editseq import flops
from editseq.perf import roofline
from editseq import sharding
from editseq import trainer

H100 = roofline.hardware("NVIDIA H100 80GB HBM3")


def compiled_tiny_step(**train):
  config = importlib.import_module("configs.test_tiny").get_config()
  config.train.update(train)
  program = trainer.TrainProgram(config, sharding.make_mesh(config.mesh, jax.devices()[:1]))
  return program.lower_train_step().compile().as_text(), program.model_cfg, config


def test_executed_flops_of_a_compiled_train_step_equal_the_model_flops():
  """Real input: XLA:CPU's optimised train step (layers in a scanned while loop, dots inside
  fusions, the loss in a loop of chunks). Without remat it executes exactly the model FLOPs
  (full attention scores: the XLA attention computes the masked half too) plus the scores once
  more per layer, which the attention's backward recomputes instead of keeping the
  probabilities (model.py); with full remat, one more forward pass of the layers' matmuls
  (whose scores the attention's backward then uses: no further recompute)."""
  text, cfg, config = compiled_tiny_step(remat="none")
  b, t = config.data.global_batch_size, config.data.seq_len
  executed = sum(k.flops for k in roofline.kernels(text))
  model_flops = flops.training_flops_per_step(cfg, b, t, causal=False)
  rescored = 2 * b * t * t * cfg.num_heads * cfg.head_dim * cfg.num_layers
  assert executed == model_flops + rescored
  text, _, _ = compiled_tiny_step(remat="full")
  layer_matmul_params = flops.matmul_params(cfg) - cfg.d_model * cfg.vocab_size
  assert sum(k.flops for k in roofline.kernels(text)) == model_flops + 2 * layer_matmul_params * b * t


_SCAN = """HloModule scan

%fused_slice (param_0: bf16[24,1024,1024], param_1: s32[]) -> bf16[1,1024,1024] {
  %param_0 = bf16[24,1024,1024]{2,1,0} parameter(0)
  %bitcast.1 = bf16[24,1024,1024]{2,1,0} bitcast(%param_0)
  %param_1 = s32[] parameter(1)
  %zero = s32[] constant(0)
  ROOT %ds = bf16[1,1024,1024]{2,1,0} dynamic-slice(%bitcast.1, %param_1, %zero, %zero), dynamic_slice_sizes={1,1024,1024}
}

%fused_update (param_0.1: f32[24,1024,1024], param_1.1: f32[1,1024,1024], param_2: s32[]) -> f32[24,1024,1024] {
  %param_0.1 = f32[24,1024,1024]{2,1,0} parameter(0)
  %param_1.1 = f32[1,1024,1024]{2,1,0} parameter(1)
  %param_2 = s32[] parameter(2)
  %zero.1 = s32[] constant(0)
  ROOT %dus = f32[24,1024,1024]{2,1,0} dynamic-update-slice(%param_0.1, %param_1.1, %param_2, %zero.1, %zero.1)
}

%gemm (p0: bf16[1024,1024], p1: bf16[1024,1024]) -> f32[1024,1024] {
  %p0 = bf16[1024,1024]{1,0} parameter(0)
  %p1 = bf16[1024,1024]{1,0} parameter(1)
  ROOT %dot.1 = f32[1024,1024]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%body (arg: (s32[], bf16[24,1024,1024], f32[24,1024,1024])) -> (s32[], bf16[24,1024,1024], f32[24,1024,1024]) {
  %arg = (s32[], bf16[24,1024,1024]{2,1,0}, f32[24,1024,1024]{2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %w = bf16[24,1024,1024]{2,1,0} get-tuple-element(%arg), index=1
  %acc = f32[24,1024,1024]{2,1,0} get-tuple-element(%arg), index=2
  %slice = bf16[1,1024,1024]{2,1,0} fusion(%w, %i), kind=kLoop, calls=%fused_slice, metadata={op_name="jit(f)/while/body/dynamic_slice"}
  %layer = bf16[1024,1024]{1,0} bitcast(%slice)
  %prod = f32[1024,1024]{1,0} fusion(%layer, %layer), kind=kCustom, calls=%gemm, metadata={op_name="jit(f)/while/body/dot_general"}
  %prod3 = f32[1,1024,1024]{2,1,0} bitcast(%prod)
  %new_acc = f32[24,1024,1024]{2,1,0} fusion(%acc, %prod3, %i), kind=kLoop, calls=%fused_update, metadata={op_name="jit(f)/while/body/dynamic_update_slice"}
  ROOT %out = (s32[], bf16[24,1024,1024]{2,1,0}, f32[24,1024,1024]{2,1,0}) tuple(%i, %w, %new_acc)
}

%cond (arg.1: (s32[], bf16[24,1024,1024], f32[24,1024,1024])) -> pred[] {
  %arg.1 = (s32[], bf16[24,1024,1024]{2,1,0}, f32[24,1024,1024]{2,1,0}) parameter(0)
  ROOT %lt = pred[] constant(true)
}

ENTRY %main (w.1: bf16[24,1024,1024], acc.1: f32[24,1024,1024]) -> f32[24,1024,1024] {
  %w.1 = bf16[24,1024,1024]{2,1,0} parameter(0)
  %acc.1 = f32[24,1024,1024]{2,1,0} parameter(1)
  %zero.2 = s32[] constant(0)
  %init = (s32[], bf16[24,1024,1024]{2,1,0}, f32[24,1024,1024]{2,1,0}) tuple(%zero.2, %w.1, %acc.1)
  %loop = (s32[], bf16[24,1024,1024]{2,1,0}, f32[24,1024,1024]{2,1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"24"}}
  ROOT %res = f32[24,1024,1024]{2,1,0} get-tuple-element(%loop), index=2
}
"""

MIB = 1 << 20


def test_loop_bodies_repeat_and_slices_cost_what_they_touch():
  launches = roofline.kernels(_SCAN)
  assert [(k.name, k.kind) for k in launches] == (
      [("slice", "memory")] * 24 + [("prod", "matmul")] * 24 + [("new_acc", "memory")] * 24)
  by_name = {k.name: k for k in launches}
  # One layer's 2 MiB sliced out of the 48 MiB stack: read 2 MiB, write 2 MiB (+ the index).
  assert by_name["slice"].bytes == 4 * MIB + 4
  # The 96 MiB accumulator is updated in place: 4 MiB of update read, 4 MiB written.
  assert by_name["new_acc"].bytes == 8 * MIB + 4
  assert by_name["prod"].flops == 2 * 1024 ** 3
  assert by_name["prod"].bytes == (2 + 2 + 4) * MIB
  assert by_name["new_acc"].op_name == "jit(f)/while/body/dynamic_update_slice"


def test_a_kernel_takes_the_longer_of_its_compute_and_its_memory_time():
  compute_bound = roofline.Kernel("k", "matmul", "fusion", "", bytes=1, flops=1e12)
  memory_bound = roofline.Kernel("m", "memory", "fusion", "", bytes=10**9, flops=0.0)
  attention = roofline.Kernel("a", "attention", "custom-call", "", bytes=1, flops=1e12)
  seconds = lambda k: roofline.kernel_seconds(k, H100, launch_s=0.0)
  # The H100 profile's rates (roofline's docstring): GEMMs 78% of peak, bandwidth 84%, cuDNN
  # attention 15%.
  assert seconds(compute_bound) == pytest.approx(1e12 / (0.78 * 989e12))
  assert seconds(memory_bound) == pytest.approx(1e9 / (0.84 * 3.35e12))
  assert seconds(attention) == pytest.approx(1e12 / (0.15 * 989e12))
  est = roofline.estimate(_SCAN, H100)
  assert est.kernels == 72
  assert est.step_s == pytest.approx(sum(roofline.kernel_seconds(k, H100)
                                         for k in roofline.kernels(_SCAN)))
  assert est.by_kind["matmul"]["launches"] == 24
  assert est.top_memory_ops[0][2] == 24


_ATTENTION = """HloModule attention

ENTRY %main (q: bf16[8,1024,12,64], k: bf16[8,1024,12,64], v: bf16[8,1024,12,64]) -> bf16[8,12,1024,64] {
  %q = bf16[8,1024,12,64]{3,2,1,0} parameter(0)
  %k = bf16[8,1024,12,64]{3,2,1,0} parameter(1)
  %v = bf16[8,1024,12,64]{3,2,1,0} parameter(2)
  %fwd = (bf16[8,12,1024,64]{3,1,2,0}, u8[0]{0}) custom-call(%q, %k, %v), custom_call_target="__cudnn$fmhaSoftmax", operand_layout_constraints={bf16[8,1024,12,64]{3,2,1,0}, bf16[8,1024,12,64]{3,2,1,0}, bf16[8,1024,12,64]{3,2,1,0}}, backend_config={"cudnn_fmha_backend_config": {"intermediate_tensor_shape": {"element_type": "BF16", "dimensions": ["8", "12", "1024", "1024"]}, "mask_type": "CAUSAL"}}
  ROOT %out = bf16[8,12,1024,64]{3,1,2,0} get-tuple-element(%fwd), index=0
}
"""


def test_cudnn_attention_flops_come_from_its_backend_config():
  (fwd,) = roofline.kernels(_ATTENTION)
  assert fwd.kind == "attention"
  assert fwd.flops == 2 * 2 * 8 * 12 * 1024 * 1024 * 64 * 0.5  # two matmuls, causal half
  no_mask = _ATTENTION.replace('"mask_type": "CAUSAL"', '"mask_type": "NO_MASK"')
  assert roofline.kernels(no_mask)[0].flops == 2 * fwd.flops
  backward = _ATTENTION.replace("fmhaSoftmax", "fmhaSoftmaxBackward")
  assert roofline.kernels(backward)[0].flops == 2.5 * fwd.flops


def test_unknown_hardware_and_text_without_entry_are_errors():
  with pytest.raises(ValueError, match="no roofline figures"):
    roofline.hardware("Some GPU 9000")
  with pytest.raises(ValueError, match="no ENTRY"):
    roofline.kernels("HloModule empty\n")
