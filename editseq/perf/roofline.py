"""Roofline estimate of a compiled step's time on an accelerator, from its optimised HLO text.

Why: `editseq.perf.aot` compiles the real train step for a GPU or TPU that this machine does not have,
so the kernels XLA would launch there are known exactly: each fusion, each GEMM, each cuDNN
attention call, and each loop body with its trip count. A kernel takes at least its FLOPs at the
matmul rate and at least its bytes (operands read + results written) at the memory bandwidth;
summing `max(flops / F, bytes / B) + launch` over the kernels gives a step time, and with it an
MFU, before renting the accelerator. It shows where the time goes (the memory-bound passes over
[batch, seq, vocab] logits, for instance), which a FLOP count alone cannot.

Calibration, on an H100 (docs/TPU_GPU.md): the efficiencies below are the rates a profile of
the 150M step (batch 64 x 1024, cuDNN attention, unrolled layers) measured for each
kind of kernel: GEMMs at 78% of peak, memory-bound fusions at 84% of the bandwidth, cuDNN's
attention (head_dim 64, packed rows of up to 16 segments, its backward helpers included) at 15%.
How close it comes to the measured steps, with the commands: docs/MEASUREMENTS.md. Trust
differences between programs more than absolute times: the model ignores overlap between
kernels, caches and the shape dependence of GEMM and attention efficiency.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import re

from editseq import flops

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2,
          "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
          "c128": 16}
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_BYTES, key=len, reverse=True)) + r")\[([0-9,]*)\]")
_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\{$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z][a-z\-]*)\((.*?)\)(, .*)?$")
# Instructions that launch nothing (views, tuples) or that sit inside a kernel's computation.
_NO_KERNEL = {"parameter", "get-tuple-element", "bitcast", "constant", "tuple", "after-all",
              "partition-id", "replica-id", "add-dependency", "opt-barrier"}
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


@dataclasses.dataclass(frozen=True)
class Hardware:
  """What bounds a kernel on one device: dense bf16 matmul FLOP/s, memory bytes/s, and the
  interconnect bytes/s that collectives move at (vendors' datasheets)."""
  peak_flops: float
  memory_bandwidth: float
  interconnect_bandwidth: float


# Per device, keyed like `flops.PEAK_FLOPS`: (HBM bytes/s, interconnect bytes/s per direction).
BANDWIDTH: dict[str, tuple[float, float]] = {
    "h100 sxm": (3.35e12, 450e9),   # 80 GB HBM3, NVLink 4
    "h100 pcie": (2.0e12, 300e9),
    "h200": (4.8e12, 450e9),        # 141 GB HBM3e
    "a100": (2.039e12, 300e9),      # SXM4 80 GB HBM2e, NVLink 3
    "tpu v4": (1.2e12, 270e9),      # ICI 6 links x 45 GB/s
    "tpu v5e": (0.819e12, 200e9),
    "tpu v5p": (2.765e12, 600e9),
    "tpu v6e": (1.64e12, 400e9),
}


def hardware(device_kind: str) -> Hardware:
  """The roofline of a device kind (e.g. "NVIDIA H100 80GB HBM3"); ValueError if unknown."""
  key = flops.device_key(device_kind)
  if key is None or key not in BANDWIDTH:
    raise ValueError(f"no roofline figures for device kind {device_kind!r}; known: "
                     f"{', '.join(sorted(BANDWIDTH))}")
  return Hardware(flops.PEAK_FLOPS[key], *BANDWIDTH[key])


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One launch: `kind` is "matmul", "attention", "memory" or "collective"; `label` the HLO op
  (with fusion kind or custom-call target); `op_name` the JAX operation it came from."""
  name: str
  kind: str
  label: str
  op_name: str
  bytes: int
  flops: float


@dataclasses.dataclass(frozen=True)
class Estimate:
  step_s: float
  kernels: int
  flops: float
  bytes: int
  by_kind: dict[str, dict[str, float]]
  top_memory_ops: list[tuple[str, float, int]]  # (JAX op, seconds, launches), slowest first

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def array_bytes(shape_text: str) -> int:
  """Bytes of every array in an HLO shape (a tuple's elements summed)."""
  return sum(_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d)
             for t, dims in _ARRAY.findall(shape_text))


def _dims(shape_text: str) -> list[int]:
  m = _ARRAY.search(shape_text)
  return [int(d) for d in m.group(2).split(",") if d] if m else []


@dataclasses.dataclass(frozen=True)
class _Instruction:
  shape: str
  op: str
  operands: list[str]
  attrs: str
  args: str  # the text between the parentheses (a parameter's index)


def parse_computations(hlo_text: str) -> tuple[dict[str, dict[str, _Instruction]], str]:
  """{computation: {instruction: _Instruction}} of an HLO module's text, and the entry's name."""
  computations: dict[str, dict[str, _Instruction]] = {}
  current, entry = None, None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = header.group(2)
      computations[current] = {}
      if header.group(1):
        entry = current
      continue
    m = _INSTRUCTION.match(line) if current else None
    if m:
      operands = re.findall(r"%([\w.\-]+)", m.group(4))
      computations[current][m.group(1)] = _Instruction(m.group(2), m.group(3), operands,
                                                       m.group(5) or "", m.group(4))
  if entry is None:
    raise ValueError("no ENTRY computation in this HLO text")
  return computations, entry


def _called(attrs: str, key: str) -> list[str]:
  return re.findall(rf"\b{key}=%([\w.\-]+)", attrs)


def _one_dot_flops(inst: _Instruction, body: dict[str, _Instruction]) -> float:
  """2 x multiply-adds of a dot: output elements x contracted size."""
  lhs = body.get(inst.operands[0]) if inst.operands else None
  contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", inst.attrs)
  if lhs is None or not contracting:
    return 0.0
  lhs_dims = _dims(lhs.shape)
  k = math.prod(lhs_dims[int(i)] for i in contracting.group(1).split(",") if i)
  return 2.0 * math.prod(_dims(inst.shape)) * k


def _dot_flops(computations, name: str, seen: frozenset = frozenset()) -> float:
  """FLOPs of the dots inside a computation and the computations it calls."""
  if name in seen or name not in computations:
    return 0.0
  body, total = computations[name], 0.0
  for inst in body.values():
    if inst.op == "dot":
      total += _one_dot_flops(inst, body)
    for callee in _called(inst.attrs, "calls") + _called(inst.attrs, "to_apply"):
      total += _dot_flops(computations, callee, seen | {name})
  return total


def _fusion_bytes(computations, callee: str, operand_bytes: list[int], out_bytes: int) -> int:
  """Bytes a fusion moves: its operands read and results written, except that an operand only
  sliced (`dynamic-slice`, e.g. one layer of stacked weights in a scan) costs the slices read,
  and a buffer updated in place (`dynamic-update-slice`) costs the update written, not itself."""
  body = computations.get(callee)
  if body is None:
    return sum(operand_bytes) + out_bytes
  def source(name: str) -> str:  # through bitcasts (views)
    while name in body and body[name].op == "bitcast" and body[name].operands:
      name = body[name].operands[0]
    return name

  users: dict[str, list[_Instruction]] = {}
  for inst in body.values():
    if inst.op != "bitcast":
      for o in inst.operands:
        users.setdefault(source(o), []).append(inst)
  total = out_bytes
  for name, inst in body.items():
    if inst.op != "parameter" or not inst.args.strip().isdigit():
      continue
    index, uses = int(inst.args), users.get(name, [])
    if index >= len(operand_bytes):
      continue
    if uses and all(u.op in ("dynamic-slice", "dynamic-update-slice")
                    and source(u.operands[0]) == name for u in uses):
      for u in uses:
        if u.op == "dynamic-slice":
          total += array_bytes(u.shape)
        else:  # in place: the result is this buffer, written only where updated
          update = array_bytes(body[u.operands[1]].shape) if u.operands[1] in body else 0
          total += update - array_bytes(u.shape)
    else:
      total += operand_bytes[index]
  return max(total, 0)


def _attention_flops(inst: _Instruction) -> float:
  """cuDNN flash attention: 2 matmuls forward (scores, values), 5 backward (scores recomputed),
  each 2·B·H·T·S·D; half of that under a causal mask."""
  config = inst.attrs
  scores = re.search(r'"intermediate_tensor_shape":\s*\{[^}]*?"dimensions":\s*\[([^\]]*)\]',
                     config)
  head_dim = re.search(r"operand_layout_constraints=\{\w+\[([0-9,]*)\]", config)
  if not scores or not head_dim:
    return 0.0
  b, h, t, s = (int(x.strip().strip('"')) for x in scores.group(1).split(","))
  d = int(head_dim.group(1).split(",")[-1])
  matmuls = 5 if "Backward" in config else 2
  causal = 0.5 if re.search(r'"mask_type":\s*"[A-Z_]*CAUSAL', config) else 1.0
  return matmuls * 2.0 * b * h * t * s * d * causal


def kernels(hlo_text: str) -> list[Kernel]:
  """Every kernel launch of one execution of the module, loop bodies repeated by trip count."""
  computations, entry = parse_computations(hlo_text)

  def walk(name: str, repeat: int) -> list[Kernel]:
    body, out = computations[name], []
    for inst_name, inst in body.items():
      if inst.op in _NO_KERNEL or inst.op.endswith("-done"):
        continue
      if inst.op == "while":
        trips = re.search(r'"known_trip_count":\s*\{"n":\s*"(\d+)"', inst.attrs)
        out += walk(_called(inst.attrs, "body")[0], repeat * (int(trips.group(1)) if trips else 1))
        continue
      if inst.op == "call":
        out += walk(_called(inst.attrs, "to_apply")[0], repeat)
        continue
      if inst.op == "conditional":  # one branch runs: count the costliest
        branches = re.search(r"branch_computations=\{([^}]*)\}", inst.attrs)
        runs = [walk(b, repeat) for b in re.findall(r"%([\w.\-]+)", branches.group(1))]
        out += max(runs, key=lambda ks: sum(k.bytes + k.flops for k in ks))
        continue
      operand_bytes = [array_bytes(body[o].shape) if o in body else 0 for o in inst.operands]
      callees = _called(inst.attrs, "calls")
      nbytes = (_fusion_bytes(computations, callees[0], operand_bytes, array_bytes(inst.shape))
                if inst.op == "fusion" and callees else
                sum(operand_bytes) + array_bytes(inst.shape))
      target = re.search(r'custom_call_target="([^"]+)"', inst.attrs)
      fusion = re.search(r"kind=(k\w+)", inst.attrs)
      label = inst.op + (f":{fusion.group(1)}" if fusion else "") + (
          f":{target.group(1)}" if target else "")
      if target and "fmha" in target.group(1):
        kind, flop_count = "attention", _attention_flops(inst)
      elif any(inst.op.startswith(c) for c in _COLLECTIVES):
        kind, flop_count = "collective", 0.0
      else:
        flop_count = sum(_dot_flops(computations, c) for c in callees)
        if inst.op == "dot":
          flop_count += _one_dot_flops(inst, body)
        kind = "matmul" if flop_count else "memory"
      op_name = re.search(r'op_name="([^"]*)"', inst.attrs)
      kernel = Kernel(inst_name, kind, label, op_name.group(1) if op_name else "", nbytes,
                      flop_count)
      out.extend([kernel] * repeat)
    return out

  return walk(entry, 1)


def kernel_seconds(kernel: Kernel, hardware: Hardware, *, matmul_efficiency: float = 0.78,
                   attention_efficiency: float = 0.15, bandwidth_efficiency: float = 0.84,
                   launch_s: float = 3e-6) -> float:
  if kernel.kind == "collective":
    return kernel.bytes / hardware.interconnect_bandwidth + launch_s
  if kernel.kind == "attention":
    matmul_efficiency = attention_efficiency
  return max(kernel.flops / (hardware.peak_flops * matmul_efficiency),
             kernel.bytes / (hardware.memory_bandwidth * bandwidth_efficiency)) + launch_s


def estimate(hlo_text: str, hardware: Hardware, **efficiencies) -> Estimate:
  """The step time of a compiled module on `hardware`, by kind of kernel and by JAX op."""
  launches = kernels(hlo_text)
  by_kind: dict[str, dict[str, float]] = collections.defaultdict(
      lambda: {"seconds": 0.0, "launches": 0, "bytes": 0, "flops": 0.0})
  memory_ops: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
  total = 0.0
  for k in launches:
    seconds = kernel_seconds(k, hardware, **efficiencies)
    total += seconds
    row = by_kind[k.kind]
    row["seconds"] += seconds
    row["launches"] += 1
    row["bytes"] += k.bytes
    row["flops"] += k.flops
    if k.kind == "memory":
      key = re.sub(r"\d+", "#", k.op_name) or k.label
      memory_ops[key][0] += seconds
      memory_ops[key][1] += 1
  top = sorted(((op, s, n) for op, (s, n) in memory_ops.items()), key=lambda r: -r[1])
  return Estimate(step_s=total, kernels=len(launches), flops=sum(k.flops for k in launches),
                  bytes=sum(k.bytes for k in launches), by_kind=dict(by_kind),
                  top_memory_ops=top[:12])


def format_estimate(est: Estimate, model_flops: float | None = None,
                    peak_flops: float | None = None) -> str:
  lines = [f"roofline: {est.kernels} kernel launches, {est.flops / 1e12:.2f} TFLOP executed, "
           f"{est.bytes / 1e9:.1f} GB moved -> {est.step_s * 1e3:.1f} ms per step"]
  if model_flops and peak_flops:
    lines[0] += f" (MFU {100 * model_flops / (est.step_s * peak_flops):.1f}%)"
  for kind, row in sorted(est.by_kind.items(), key=lambda kv: -kv[1]["seconds"]):
    lines.append(f"  {kind:10s} {row['seconds'] * 1e3:8.2f} ms  {int(row['launches']):5d} "
                 f"launches  {row['bytes'] / 1e9:7.1f} GB  {row['flops'] / 1e12:7.2f} TFLOP")
  if est.top_memory_ops:
    lines.append("  slowest memory-bound ops:")
    lines += [f"    {s * 1e3:7.2f} ms  x{n:<4d} {op[:100]}" for op, s, n in est.top_memory_ops]
  return "\n".join(lines)
