"""Training speed: tokens/s and MFU of the trainer's jitted train step, beside PyTorch.

    python -m editseq.perf.bench_train --config=configs/test_tiny.py
    python -m editseq.perf.bench_train --config=configs/tinycodelm_150m.py \
        --config.data.global_batch_size=4 --config.data.seq_len=512 \
        --config.train.compute_dtype=float32

Times `editseq.trainer.TrainProgram.train_step` (the exact jitted, sharded, donated step that
`editseq.train` runs: forward, backward, clipping, AdamW) and, with --torch, `transformers`'
`LlamaForCausalLM` of the same shape (no biases, gated MLP, RoPE, tied embeddings; fp32,
`sdpa` attention) doing the same step: forward, token cross entropy, backward, global-norm
clipping, `torch.optim.AdamW`, at the same batch × sequence length. The two differ only where
the architectures do: Llama uses RMSNorm with a scale where TinyCodeLM uses LayerNorm without one.

Batches are synthetic (uniform random tokens, one segment per row, every token in the loss), so
the figure measures the step and not the input pipeline. Timing alternates rounds between the two
frameworks, so that load from other processes on the machine falls on both; each side's figure
is its median round (--nointerleave times one side, frees it, then the other: half the memory).
The last line of output is one JSON object with every figure.

Memory: each side's peak resident memory (the process's VmHWM, reset before the side is built;
with --interleave both sides live in one process, so both get the process's peak) against the
bytes of its parameters and optimizer state (fp32 parameters and AdamW's two moments), and for
the JAX step XLA's own figures (`compiled.memory_analysis()`: arguments and temporaries).

MFU uses `editseq.flops` (model FLOPs, causal attention) over the device peak from its table. On
CPU the table's figure is an estimate, so the matmul rate of this machine is also measured in the
same run (an n×n fp32/bf16 matmul) and MFU against it is reported too.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import app
from absl import flags
from ml_collections import config_flags

from data_gen import paths
from data_gen import quiet_logs
from data_gen import usage
from editseq import cli
from editseq import config_validation
from editseq import flops
from editseq import model as model_lib
from editseq import sharding
from editseq import trainer
from editseq.perf import profile_summary

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds per framework (alternating).")
_STEPS = flags.DEFINE_integer("steps", 2, "Train steps per timed round.")
_TORCH = flags.DEFINE_bool("torch", True, "Also time transformers' PyTorch Llama (CPU).")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads for PyTorch.")
_INTERLEAVE = flags.DEFINE_bool(
    "interleave", True, "Alternate timed rounds between the frameworks (both models in memory); "
    "--nointerleave times one, frees it, then the other (half the memory, for 150M on CPU).")
_PROFILE_DIR = flags.DEFINE_string(
    "profile_dir", "", "Also trace --profile_steps warm JAX steps with jax.profiler into this "
    "folder (TensorBoard/Perfetto) and print where the device time went (editseq.perf.profile_summary).")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 3, "Steps in the --profile_dir trace.")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 0,
                                 "Size of the matmul that measures the device's rate "
                                 "(0: 2048 on CPU, 8192 on accelerators).")


def peak_rss_bytes() -> int:
  """The process's peak resident memory (VmHWM: since start or the last `reset_peak_rss`)."""
  try:
    with open("/proc/self/status", encoding="ascii") as status:
      for line in status:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def reset_peak_rss() -> int:
  """Restarts `peak_rss_bytes` from the current resident memory (Linux; elsewhere a no-op) and
  returns that memory (what the process holds before what is measured next)."""
  try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
      clear_refs.write("5")
  except OSError:
    pass
  return peak_rss_bytes()


def tree_bytes(tree) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(tree))


def synthetic_batch(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0
                    ) -> dict[str, np.ndarray]:
  """A batch in the input pipeline's format: random tokens, one segment per row, full loss."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab_size, (batch_size, seq_len + 1), dtype=np.int32)
  return {
      "inputs": tokens[:, :-1],
      "targets": tokens[:, 1:],
      "loss_mask": np.ones((batch_size, seq_len), np.int32),
      "segment_ids": np.ones((batch_size, seq_len), np.int32),
      "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len)),
  }


class JaxStep:
  """The trainer's own jitted train step on a fixed batch; `run(n)` returns seconds for n steps."""

  name = "editseq (JAX)"

  def __init__(self, config: ml_collections.ConfigDict, batch: Mapping[str, np.ndarray]):
    self.mesh = sharding.make_mesh(config.mesh)
    self.program = trainer.TrainProgram(config, self.mesh)
    start = time.perf_counter()
    self.train_step = self.program.compile_train_step()
    self.compile_s = time.perf_counter() - start
    with jax.set_mesh(self.mesh):
      self.state = self.program.init(jax.random.key(config.train.seed))
      self.batch = self.program.global_batch(batch)
    self.num_params = model_lib.count_params(self.state["params"])
    self.state_bytes = tree_bytes((self.state["params"], self.state["opt_state"]))
    memory = self.train_step.memory_analysis()
    self.xla_memory = {} if memory is None else {
        "xla_argument_bytes": memory.argument_size_in_bytes,
        "xla_temp_bytes": memory.temp_size_in_bytes,
        "xla_step_bytes": trainer.step_memory_bytes(memory)}
    self.last_loss = self._steps(1)

  def _steps(self, n: int) -> float:
    with jax.set_mesh(self.mesh):
      for _ in range(n):
        self.state, step_metrics = self.train_step(self.state, self.batch)
      return float(jax.device_get(step_metrics["loss"]))

  def run(self, n: int) -> float:
    start = time.perf_counter()
    self.last_loss = self._steps(n)
    return time.perf_counter() - start

  def profile(self, log_dir: str, n: int) -> profile_summary.OpTimes:
    """Traces n steps into log_dir and returns their per-op device time."""
    with jax.profiler.trace(log_dir):
      self.last_loss = self._steps(n)
    return profile_summary.op_times(profile_summary.find_trace(log_dir))


def _import_torch():
  """Imports torch with OpenMP's passive wait policy (unless the user set one).

  OpenMP threads otherwise spin at every barrier; on a machine shared with other processes they
  lose their cores mid-spin and a step takes 3-10x longer (measured here: 0.48 s vs 1.5-6.5 s per
  step of the tiny config with 2 threads). Passive waiting gives PyTorch its best figure. It
  only takes effect if torch was not imported before.
  """
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  return torch, transformers


class TorchStep:
  """transformers' LlamaForCausalLM of the same shape, fp32 on CPU, doing the same step."""

  name = "transformers Llama (PyTorch)"

  def __init__(self, cfg: model_lib.ModelConfig, opt: ml_collections.ConfigDict,
               batch: Mapping[str, np.ndarray], threads: int):
    torch, transformers = _import_torch()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    self.torch = torch
    llama_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_seq_len, rope_theta=cfg.rope_base,
        tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False,
        hidden_act="silu" if cfg.mlp_activation == "silu" else "gelu_pytorch_tanh",
        rms_norm_eps=cfg.norm_eps, use_cache=False, attn_implementation="sdpa")
    self.model = transformers.LlamaForCausalLM(llama_cfg).train()
    self.num_params = sum(p.numel() for p in self.model.parameters())
    self.xla_memory = {}
    self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=opt.learning_rate,
                                       betas=(opt.b1, opt.b2), eps=opt.eps,
                                       weight_decay=opt.weight_decay)
    self.clip = opt.grad_clip_norm
    self.inputs = torch.from_numpy(np.asarray(batch["inputs"], np.int64))
    self.targets = torch.from_numpy(np.asarray(batch["targets"], np.int64))
    start = time.perf_counter()
    self.last_loss = self._step()
    self.compile_s = time.perf_counter() - start
    self.state_bytes = sum(t.nbytes for t in self.model.parameters()) + sum(
        t.nbytes for state in self.optimizer.state.values() for t in state.values()
        if isinstance(t, torch.Tensor) and t.dim())

  def _step(self) -> float:
    torch = self.torch
    logits = self.model(input_ids=self.inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), self.targets.flatten())
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if self.clip > 0:
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
    self.optimizer.step()
    return loss.item()

  def run(self, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      self.last_loss = self._step()
    return time.perf_counter() - start


def time_rounds(runners: list, rounds: int, steps: int) -> dict[str, list[float]]:
  """Seconds per step of each runner in each round; rounds alternate between the runners."""
  seconds: dict[str, list[float]] = {r.name: [] for r in runners}
  with tqdm.tqdm(total=rounds * len(runners), desc="timing", unit="round", file=sys.stderr) as bar:
    for _ in range(rounds):
      for runner in runners:
        seconds[runner.name].append(runner.run(steps) / steps)
        bar.update()
  return seconds


def time_runners(factories: list[Callable[[], Any]], rounds: int, steps: int, interleave: bool,
                 log: Callable[[str], None]) -> list[dict]:
  """Builds and times each runner: all alive with alternating rounds, or one after the other.

  One after the other, a runner is dropped before the next is built, so the process holds one
  model and optimizer at a time (at 150M both at once need ~14 GB on CPU), and each runner's
  peak resident memory is its own (plus what the process held before it was built).
  """
  def summary(runner, seconds, rss_before):
    return {"name": runner.name, "num_params": runner.num_params, "seconds": seconds,
            "final_loss": runner.last_loss, "peak_rss_bytes": peak_rss_bytes(),
            "rss_before_bytes": rss_before, "state_bytes": runner.state_bytes,
            **runner.xla_memory}

  def built(factory):
    runner = factory()
    log(f"{runner.name}: {runner.num_params / 1e6:.2f}M parameters, first step "
        f"(compile/warm-up) {runner.compile_s:.1f}s, loss {runner.last_loss:.4f}")
    return runner

  if interleave:
    rss_before = reset_peak_rss()
    runners = [built(f) for f in factories]
    seconds = time_rounds(runners, rounds, steps)
    return [summary(r, seconds[r.name], rss_before) for r in runners]
  results = []
  for factory in factories:
    gc.collect()
    rss_before = reset_peak_rss()
    runner = built(factory)
    results.append(summary(runner, time_rounds([runner], rounds, steps)[runner.name],
                           rss_before))
    del runner
  return results


def _load_config() -> ml_collections.ConfigDict:
  """The --config with its overrides, checked as editseq.train checks it (no data, no workdir)."""
  config = cli.load_config(_CONFIG)
  if config is None:
    raise config_validation.ConfigError("--config is required, e.g. --config=configs/test_tiny.py")
  config_validation.validate_step(config)
  return config


def benchmark(config: ml_collections.ConfigDict, *, rounds: int, steps: int, use_torch: bool,
              torch_threads: int, matmul_n: int, interleave: bool = True,
              profile_dir: str = "", profile_steps: int = 3,
              log: Callable[[str], None] = print) -> dict:
  """Runs the benchmark and returns its figures (the JSON record)."""
  config = config_validation.for_device(config)
  model_cfg = model_lib.ModelConfig.from_config_dict(config.model, config.train)
  batch_size, seq_len = config.data.global_batch_size, config.data.seq_len
  batch = synthetic_batch(batch_size, seq_len, model_cfg.vocab_size, config.data.seed)
  device = jax.devices()[0]
  num_devices = jax.device_count()
  if use_torch and device.platform != "cpu":
    raise config_validation.ConfigError(
        f"--torch compares on CPU only; this run's devices are {device.platform} (pass --notorch)")

  flops_per_token = flops.training_flops_per_token(model_cfg, seq_len)
  try:
    peak = flops.peak_flops_per_device(device)
  except ValueError:
    peak = float("nan")
  matmul_dtype = jnp.float32 if model_cfg.dtype == "float32" else jnp.dtype(model_cfg.dtype)
  n = matmul_n or (2048 if device.platform == "cpu" else 8192)
  measured_peak = flops.measure_matmul_flops(n, matmul_dtype, device)

  log(f"device: {num_devices} x {device.device_kind} ({device.platform}); table peak "
      f"{peak / 1e12:.3f} TFLOP/s per device; measured {n}^3 {jnp.dtype(matmul_dtype).name} "
      f"matmul {measured_peak / 1e12:.3f} TFLOP/s")
  log(f"model: {model_cfg.num_layers} layers, d_model {model_cfg.d_model}, {model_cfg.num_heads} "
      f"heads, mlp {model_cfg.mlp_dim}, vocab {model_cfg.vocab_size}, compute "
      f"{model_cfg.dtype}, {model_cfg.execution}; batch {batch_size} x {seq_len}; "
      f"{flops_per_token / 1e6:.1f} MFLOP/token")

  profile: dict = {}

  def jax_step() -> JaxStep:
    step = JaxStep(config, batch)
    if profile_dir:  # warm steps (the first compiled), before the timed rounds
      try:
        times = step.profile(profile_dir, profile_steps)
      except profile_summary.TraceError as e:  # the trace is kept for TensorBoard/Perfetto
        log(f"profile written to {profile_dir}, but not summarised: {e}")
        profile.update({"profile_dir": profile_dir, "profile_steps": profile_steps})
        return step
      log(profile_summary.format_summary(times, top=15))
      top = sorted(times.per_op.items(), key=lambda kv: -kv[1])[:15]
      profile.update({"profile_dir": profile_dir, "profile_steps": profile_steps,
                      "profile_busy_s_per_step": times.busy_s / profile_steps,
                      "profile_span_s_per_step": times.span_s / profile_steps,
                      "profile_top_ops_s_per_step": {op: t / profile_steps for op, t in top}})
    return step

  factories = [jax_step]
  if use_torch:
    factories.append(lambda: TorchStep(model_cfg, config.optimizer, batch, torch_threads))
  results = time_runners(factories, rounds, steps, interleave, log)

  tokens = batch_size * seq_len
  record: dict = {
      "config": {k: config.model[k] for k in config.model.keys()},
      "batch_size": batch_size, "seq_len": seq_len, "compute_dtype": model_cfg.dtype,
      "remat": model_cfg.remat, "device_kind": device.device_kind, "num_devices": num_devices,
      "flops_per_token": flops_per_token, "peak_flops_per_device": peak,
      "measured_matmul_flops": measured_peak, "rounds": rounds, "steps_per_round": steps,
      "interleaved": interleave, **profile,
  }
  for r, key in zip(results, ("jax", "torch")):
    step_s = statistics.median(r["seconds"])
    tokens_per_s = tokens / step_s
    # Both sides use the whole host: on CPU, num_devices x per-device peak is the host's peak.
    mfu = (flops.mfu(tokens_per_s, flops_per_token, num_devices, peak)
           if math.isfinite(peak) else None)
    mfu_measured = flops.mfu(tokens_per_s, flops_per_token, num_devices, measured_peak)
    record.update({f"{key}_tokens_per_s": tokens_per_s, f"{key}_step_s": step_s,
                   f"{key}_step_s_rounds": r["seconds"], f"{key}_mfu": mfu,
                   f"{key}_mfu_vs_measured_matmul": mfu_measured,
                   f"{key}_params": r["num_params"], f"{key}_final_loss": r["final_loss"],
                   f"{key}_peak_rss_bytes": r["peak_rss_bytes"],
                   f"{key}_rss_before_bytes": r["rss_before_bytes"],
                   f"{key}_state_bytes": r["state_bytes"],
                   f"{key}_peak_rss_over_state": r["peak_rss_bytes"] / r["state_bytes"],
                   **{f"{key}_{name}": v for name, v in r.items() if name.startswith("xla_")}})
    mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
    log(f"{r['name']}: {tokens_per_s:,.0f} tokens/s, {step_s:.3f} s/step, MFU {mfu_text} "
        f"(vs measured matmul {100 * mfu_measured:.1f}%)")
    gb = lambda n: f"{n / 1e9:.2f} GB"
    xla = (f"; XLA: arguments {gb(r['xla_argument_bytes'])}, temporaries "
           f"{gb(r['xla_temp_bytes'])}" if "xla_temp_bytes" in r else "")
    log(f"{r['name']}: peak resident memory {gb(r['peak_rss_bytes'])}"
        f"{' (both frameworks in the process)' if interleave and use_torch else ''} = "
        f"{r['peak_rss_bytes'] / r['state_bytes']:.2f}x its parameters + optimizer state "
        f"({gb(r['state_bytes'])}), {gb(r['rss_before_bytes'])} of it held before it was "
        f"built{xla}")
  if use_torch:
    record["ratio_jax_over_torch"] = record["jax_tokens_per_s"] / record["torch_tokens_per_s"]
    log(f"ratio editseq / PyTorch: {record['ratio_jax_over_torch']:.2f}x")
  return record


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    profile_dir = paths.absolute(_PROFILE_DIR.value)
    if profile_dir:
      paths.check_writable_dir(profile_dir, "--profile_dir")
    config = _load_config()
    if min(_ROUNDS.value, _STEPS.value, _PROFILE_STEPS.value) < 1:
      raise config_validation.ConfigError("--rounds, --steps and --profile_steps must be >= 1")
    if _TORCH.value:
      # Found, not imported: torch's libraries (~0.2 GB resident) would count in the JAX side's
      # memory, which is measured first (`editseq.train` never imports them).
      missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
      if missing:
        raise config_validation.ConfigError(
            f"--torch needs torch and transformers (requirements-dev.txt): no {', '.join(missing)}; "
            "or pass --notorch")
    record = benchmark(config, rounds=_ROUNDS.value, steps=_STEPS.value, use_torch=_TORCH.value,
                       torch_threads=_TORCH_THREADS.value, matmul_n=_MATMUL_N.value,
                       interleave=_INTERLEAVE.value, profile_dir=profile_dir,
                       profile_steps=_PROFILE_STEPS.value)
  except (config_validation.ConfigError, paths.PathError) as e:
    usage.fail(str(e))
  print(json.dumps({"command": " ".join(["python -m editseq.perf.bench_train", *sys.argv[1:]]),
                    **record}))


if __name__ == "__main__":
  quiet_logs.install()
  app.run(main, flags_parser=cli.parse_flags)
