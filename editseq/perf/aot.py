"""Compiles the train step for GPUs or TPUs that this machine does not have (ahead of time).

    PYTHONPATH=.venv/aot python -m editseq.perf.aot --config=configs/tinycodelm_150m.py \\
        --target=h100 --config.data.global_batch_size=64
    PYTHONPATH=.venv/aot python -m editseq.perf.aot --config=configs/tinycodelm_400m.py --target=v5e:4x4

XLA compiles the real `TrainProgram.train_step` (model, sharding, optimizer, donated state) for
the target's devices: a GPU described by its datasheet (`GPUS`), or a TPU slice from libtpu's
topologies. Reported per device: the memory the step needs against what the device has (before
paying for it, and before a compile on the real machine fails), the model FLOPs, and for GPUs a
roofline estimate of the step time and MFU from the compiled kernels (`editseq.perf.roofline`).

Needs the compilers, not the hardware (requirements-aot.txt): `jax-cuda12-plugin`,
`jax-cuda12-pjrt` and `nvidia-cudnn-cu12` for GPU targets, `libtpu` for TPU targets. They go
beside the training environment, not in it (there JAX would try to start those backends on every
run): `bash scripts/setup.sh --aot` installs them into .venv/aot (`pip install --no-deps
--target .venv/aot -r requirements-aot.txt`), only on request: the main job never uses them. This command itself only ever runs on the host's CPU.

Exit status: 0 compiled and fits, 1 does not fit the device's memory, 2 bad flags, config or
missing compiler.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from data_gen import paths
from data_gen import quiet_logs
from data_gen import usage
from editseq import cli

# The host compiles; the target's devices are descriptions. Set before anything starts JAX's
# backends: loading --config imports the model (configs/base.py), during flag parsing.
os.environ["JAX_PLATFORMS"] = "cpu"

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file; override fields with --config.SECTION.KEY=VALUE.",
    lock_config=True)
_TARGET = flags.DEFINE_string(
    "target", "h100", "GPU: NAME, NAME:N (N GPUs on one host) or NAME:HxN (H hosts of N), with "
    "NAME one of h100, h200, a100. TPU: a libtpu topology, e.g. v5e:2x2, v4:2x2x1, v5p:2x2x2, "
    "v6e:4x4.")
_HLO_OUT = flags.DEFINE_string("hlo_out", None, "Write the compiled (optimised) HLO text here.")
_MEASURED_STEP_S = flags.DEFINE_float(
    "measured_step_s", None, "Calibration: the step time measured on the target for this config "
    "(docs/MEASUREMENTS.md); the record then gives the roofline's relative error against it.")

EXIT_DOES_NOT_FIT = 1
_INSTALL = ("install them with `bash scripts/setup.sh --aot` (requirements-aot.txt into "
            ".venv/aot, 2.3 GB), then run with PYTHONPATH=.venv/aot")
# JAX's GPU client preallocates this share of device memory (XLA_PYTHON_CLIENT_MEM_FRACTION).
_GPU_DEFAULT_MEM_FRACTION = 0.75


class AotError(Exception):
  """A target, config or installation problem, told in one line."""


@dataclasses.dataclass(frozen=True)
class GpuSpec:
  """The datasheet figures XLA:GPU compiles against (stream_executor.GpuTargetConfigProto)."""
  device_kind: str
  compute_capability: tuple[int, int]
  sm_count: int
  clock_ghz: float
  memory_bytes: int
  l2_bytes: int
  shared_memory_per_sm: int
  shared_memory_per_block_optin: int

  def target_config(self, memory_bandwidth: float) -> str:
    """The text proto that `jax_cuda12_plugin` takes as `target_config`."""
    major, minor = self.compute_capability
    return f"""gpu_device_info {{
  name: "{self.device_kind}"
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {self.shared_memory_per_sm}
  threads_per_core_limit: 2048
  core_count: {self.sm_count}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(memory_bandwidth)}
  l2_cache_size: {self.l2_bytes}
  clock_rate_ghz: {self.clock_ghz}
  device_memory_size: {self.memory_bytes}
  shared_memory_per_block_optin: {self.shared_memory_per_block_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 10 }}
runtime_version {{ major: 12 minor: 9 }}
device_description_str: "{self.device_kind}"
"""


GPUS: dict[str, GpuSpec] = {
    "h100": GpuSpec("NVIDIA H100 80GB HBM3", (9, 0), 132, 1.98, 85_045_477_376, 50 << 20,
                    228 << 10, 227 << 10),
    "h200": GpuSpec("NVIDIA H200", (9, 0), 132, 1.98, 150_754_820_096, 50 << 20, 228 << 10,
                    227 << 10),
    "a100": GpuSpec("NVIDIA A100-SXM4-80GB", (8, 0), 108, 1.41, 85_899_345_920, 40 << 20,
                    164 << 10, 163 << 10),
}
# HBM per chip, for TPU targets (whose compiler itself refuses a program that does not fit).
TPU_MEMORY_BYTES = {"tpu v4": 32 << 30, "tpu v5e": 16 << 30, "tpu v5p": 95 << 30,
                    "tpu v6e": 32 << 30}


@dataclasses.dataclass(frozen=True)
class Target:
  devices: list
  device_kind: str
  memory_bytes: int
  usable_fraction: float  # of memory_bytes that a JAX process gets by default
  gpu: GpuSpec | None = None  # None for a TPU


def parse_gpu_target(text: str) -> tuple[str, int, int] | None:
  """"h100" -> ("h100", 1, 1), "h100:8" -> (.., 1, 8), "h100:2x8" -> (.., 2, 8); None if not a
  GPU name."""
  name, _, shape = text.lower().partition(":")
  if name not in GPUS:
    return None
  try:
    parts = [int(p) for p in shape.split("x")] if shape else [1]
  except ValueError:
    parts = []
  if len(parts) not in (1, 2) or min(parts) < 1:
    raise AotError(f"--target={text}: expected {name}, {name}:N or {name}:HOSTSxN")
  hosts, per_host = (1, parts[0]) if len(parts) == 1 else parts
  return name, hosts, per_host


def make_target(text: str) -> Target:
  """Compile-only devices for `--target`."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  from editseq import flops  # pylint: disable=g-import-not-at-top
  from editseq.perf import roofline  # pylint: disable=g-import-not-at-top
  gpu = parse_gpu_target(text)
  if gpu is not None:
    name, hosts, per_host = gpu
    spec = GPUS[name]
    bandwidth = roofline.hardware(spec.device_kind).memory_bandwidth
    try:
      topology = topologies.get_topology_desc(
          platform="cuda", target_config=spec.target_config(bandwidth),
          topology=f"1x{hosts}x{per_host}")
    except NotImplementedError as e:
      raise AotError(f"GPU targets need XLA's CUDA compiler ({e}): {_INSTALL}") from e
    fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION",
                                    _GPU_DEFAULT_MEM_FRACTION))
    return Target(list(topology.devices), spec.device_kind, spec.memory_bytes, fraction, spec)
  if ":" not in text:
    raise AotError(f"unknown --target {text!r}: a GPU ({', '.join(GPUS)}, optionally :N or "
                   ":HxN) or a TPU topology such as v5e:2x2")
  options = {"chip_config_name": "megacore"} if text.lower().startswith("v4:") else {}
  try:
    topology = topologies.get_topology_desc(text.lower(), platform="tpu", **options)
  except RuntimeError as e:
    if "not installed" in str(e):
      raise AotError(f"TPU targets need libtpu ({e}): {_INSTALL}") from e
    raise AotError(f"--target={text}: {usage.one_line(e)}") from e
  devices = list(topology.devices)
  kind = devices[0].device_kind
  memory = TPU_MEMORY_BYTES.get(flops.device_key(kind) or "")
  if memory is None:
    raise AotError(f"--target={text}: no memory size known for {kind!r}")
  return Target(devices, kind, memory, 1.0)


@contextlib.contextmanager
def _cudnn_checks_answer_for(spec: GpuSpec | None):
  """While tracing cuDNN attention, JAX asks the default backend's first GPU for its compute
  capability (to allow packed sequences, Hopper and later). Here the default backend is the
  host's CPU, so answer for the target GPU instead."""
  if spec is None:
    yield
    return
  from jax._src.cudnn import fused_attention_stablehlo as fa  # pylint: disable=g-import-not-at-top
  target = spec.compute_capability
  parse = lambda c: tuple(int(x) for x in c.split("."))
  saved = fa.check_compute_capability, fa.is_cuda_compute_capability_equal
  fa.check_compute_capability = lambda c: target >= parse(c)
  fa.is_cuda_compute_capability_equal = lambda c: target == parse(c)
  try:
    yield
  finally:
    fa.check_compute_capability, fa.is_cuda_compute_capability_equal = saved


def train_program(config, target: Target):
  """`config`'s TrainProgram on the target's devices, checked like editseq.train."""
  from editseq import config_validation, sharding, trainer  # pylint: disable=g-import-not-at-top
  config_validation.validate_step(config, target.devices)
  return trainer.TrainProgram(config, sharding.make_mesh(config.mesh, target.devices))


def report(config, target: Target, log=print, hlo_out: str | None = None) -> dict:
  """Compiles, prints the figures, and returns them (the JSON record); the compiled HLO text
  goes to file `hlo_out` when given."""
  import jax  # pylint: disable=g-import-not-at-top
  from editseq import flops, trainer  # pylint: disable=g-import-not-at-top
  from editseq.perf import roofline  # pylint: disable=g-import-not-at-top
  program = train_program(config, target)
  model_cfg, mesh = program.model_cfg, program.mesh
  with _cudnn_checks_answer_for(target.gpu):
    lowered = program.lower_train_step()
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    log(f"does not fit: {usage.one_line(e)}; {program.smaller_step_hint(None)}")
    return {"fits": False, "compile_error": usage.one_line(e)}
  if hlo_out:
    os.makedirs(os.path.dirname(hlo_out), exist_ok=True)
    with open(hlo_out, "w") as f:
      f.write(compiled.as_text())
  memory = compiled.memory_analysis()
  needed = trainer.step_memory_bytes(memory)
  usable = int(target.memory_bytes * target.usable_fraction)
  shortfall = program.memory_shortfall(memory, usable)
  batch, seq_len = config.data.global_batch_size, config.data.seq_len
  model_flops = flops.training_flops_per_step(model_cfg, batch, seq_len) / len(target.devices)
  gib = lambda n: f"{n / 2**30:.2f} GiB"
  log(f"target: {len(target.devices)} x {target.device_kind}, mesh {dict(mesh.shape)}; "
      f"batch {batch} x {seq_len}, {model_cfg.execution}, loss chunk "
      f"{config.train.loss_chunk_size}")
  log(f"memory per device: {gib(needed)} needed (state {gib(memory.argument_size_in_bytes)}, "
      f"temporaries {gib(memory.temp_size_in_bytes)}) of {gib(usable)} usable "
      f"({gib(target.memory_bytes)} x {target.usable_fraction:g})")
  record = {
      "target": _TARGET.value, "device_kind": target.device_kind,
      "num_devices": len(target.devices), "mesh": dict(mesh.shape), "batch_size": batch,
      "seq_len": seq_len, "remat": model_cfg.remat, "attention_impl": model_cfg.attention_impl,
      "scan_layers": model_cfg.scan_layers, "loss_chunk_size": config.train.loss_chunk_size,
      "memory_needed_bytes": needed, "memory_state_bytes": memory.argument_size_in_bytes,
      "memory_temp_bytes": memory.temp_size_in_bytes, "memory_usable_bytes": usable,
      "fits": shortfall is None, "model_flops_per_device": model_flops,
  }
  if target.gpu is not None:
    hw = roofline.hardware(target.device_kind)
    est = roofline.estimate(compiled.as_text(), hw)
    log(roofline.format_estimate(est, model_flops, hw.peak_flops))
    record.update({"estimated_step_s": est.step_s,
                   "estimated_tokens_per_s": batch * seq_len / est.step_s,
                   "estimated_mfu": model_flops / (est.step_s * hw.peak_flops),
                   "roofline": est.as_dict()})
    if _MEASURED_STEP_S.value:
      record.update({"measured_step_s": _MEASURED_STEP_S.value,
                     "model_error": est.step_s / _MEASURED_STEP_S.value - 1})
      log(f"roofline vs measured: {est.step_s * 1e3:.1f} ms modelled, "
          f"{_MEASURED_STEP_S.value * 1e3:.1f} ms measured ({record['model_error']:+.1%})")
  if shortfall:
    log(f"does not fit: {shortfall}")
  return record


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from editseq import config_validation  # pylint: disable=g-import-not-at-top
  try:
    hlo_out = paths.absolute(_HLO_OUT.value)
    if hlo_out:
      paths.check_writable_dir(os.path.dirname(hlo_out), "the folder of --hlo_out")
    config = cli.load_config(_CONFIG)
    if config is None:
      raise AotError("--config is required, e.g. --config=configs/tinycodelm_150m.py")
    record = report(config, make_target(_TARGET.value), hlo_out=hlo_out)
  except (AotError, config_validation.ConfigError, paths.PathError) as e:
    usage.fail(str(e))
  print(json.dumps({"command": " ".join(["python -m editseq.perf.aot", *sys.argv[1:]]), **record}))
  if not record["fits"]:
    sys.exit(EXIT_DOES_NOT_FIT)


if __name__ == "__main__":
  quiet_logs.install()
  app.run(main, flags_parser=cli.parse_flags)
