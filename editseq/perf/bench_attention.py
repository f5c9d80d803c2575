"""One attention layer alone, forward and backward, for each implementation that runs here.

    python -m editseq.perf.bench_attention                     # the 150M shape at batch 64 x 1024
    python -m editseq.perf.bench_attention --impl cudnn --max_segments 1,4,16 --segments_per_row 1,4

Why: a step's profile lumps attention with everything else, and packed cuDNN attention costs
more with a larger `model.max_segments` (the cap on examples per row) whether or not the rows
hold that many (docs/TPU_GPU.md). This times the model's own `attend` on roped-shape random
q, k, v under the masks the model builds (`sequence_masks`), per implementation, cap and number
of examples per row (`none`: no segment ids). Prints one line per setting (ms per layer and the
attention FLOP rate, counted as `editseq.flops` counts it for MFU: causal, whole rows), then as
its last line one JSON object with every record.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from editseq import attention
from editseq import flops
from editseq import model as model_lib


def _csv(kind):
  def parse(text: str) -> list:
    try:
      return [None if v == "none" else kind(v) for v in text.split(",")]
    except ValueError as e:
      raise argparse.ArgumentTypeError(f"expected a comma-separated list: {e}") from e
  return parse


def _segment_ids(batch: int, seq_len: int, per_row: int | None) -> np.ndarray | None:
  """`per_row` equal segments in every row (the last takes the remainder), or None."""
  if per_row is None:
    return None
  ids = 1 + np.minimum(np.arange(seq_len) // -(-seq_len // per_row), per_row - 1)
  return np.broadcast_to(ids.astype(np.int32), (batch, seq_len))


def _positions(segment_ids: np.ndarray | None, batch: int, seq_len: int) -> np.ndarray:
  """Positions counting from each segment's start, as the input pipeline writes them."""
  if segment_ids is None:
    return np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len))
  row = segment_ids[0]
  starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
  pos = np.arange(seq_len) - np.repeat(starts, np.diff(np.r_[starts, seq_len]))
  return np.broadcast_to(pos.astype(np.int32), (batch, seq_len))


def time_attention(cfg: model_lib.ModelConfig, batch: int, seq_len: int, per_row: int | None,
                   steps: int) -> float:
  """Seconds per forward + backward of `attend` for one layer (gradients of q, k and v)."""
  seg = _segment_ids(batch, seq_len, per_row)
  positions = jnp.asarray(_positions(seg, batch, seq_len))
  seg = None if seg is None else jnp.asarray(seg)
  shape = (batch, seq_len)
  keys = jax.random.split(jax.random.key(0), 3)
  dt = jnp.dtype(cfg.dtype)
  q = jax.random.normal(keys[0], (*shape, cfg.num_heads, cfg.head_dim), dt)
  k, v = (jax.random.normal(kk, (*shape, cfg.num_kv_heads, cfg.head_dim), dt) for kk in keys[1:])

  def loss(q, k, v, positions, seg):
    mask = attention.sequence_masks(cfg, positions, seg)(cfg.sliding_window or
                                                         attention.NO_WINDOW)
    return attention.attend(q, k, v, mask, cfg).astype(jnp.float32).sum()

  step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  jax.block_until_ready(step(q, k, v, positions, seg))
  start = time.perf_counter()
  for _ in range(steps):
    out = step(q, k, v, positions, seg)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m editseq.perf.bench_attention", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--impl", type=_csv(str), default=None,
                      help="xla, cudnn, splash (default: every one that runs on this device)")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--seq_len", type=int, default=1024)
  parser.add_argument("--heads", type=int, default=12)
  parser.add_argument("--kv_heads", type=int, default=0, help="0: as many as --heads")
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--window", type=int, default=0, help="sliding window (0: none)")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--max_segments", type=_csv(int), default=[16],
                      help="cuDNN's cap on examples per row (model.max_segments), a list")
  parser.add_argument("--segments_per_row", type=_csv(int), default=[1],
                      help="examples in each row, a list; none: no segment ids")
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args(argv)

  device = jax.devices()[0]
  base = model_lib.ModelConfig(
      vocab_size=1, num_layers=1, d_model=args.heads * args.head_dim, num_heads=args.heads,
      num_kv_heads=args.kv_heads or args.heads, head_dim=args.head_dim, mlp_dim=1,
      sliding_window=args.window, dtype=args.dtype, scan_layers=False)
  runs_here = base.attention_that_runs_on(device)
  impls = args.impl or list(runs_here)
  for impl in impls:
    if impl not in ("xla", "cudnn", "splash"):
      parser.error(f"--impl {impl!r}: expected xla, cudnn or splash")
    if impl not in runs_here:
      parser.error(f"attention {impl!r} does not run on {device.device_kind} "
                   f"(here: {', '.join(runs_here)})")
  if any(n is not None and n < 1 for n in args.segments_per_row + args.max_segments):
    parser.error("--segments_per_row and --max_segments take counts >= 1 (or none)")

  records = []
  print(f"device: {device.device_kind}; batch {args.batch} x {args.seq_len}, {args.heads} heads "
        f"({base.num_kv_heads} kv) of {args.head_dim}, {args.dtype}; forward + backward, one layer")
  for impl in impls:
    for cap in (args.max_segments if impl == "cudnn" else [None]):
      cfg = dataclasses.replace(base, attention_impl=impl,
                                **({"max_segments": cap} if cap else {}))
      attention_flops = args.batch * args.seq_len * flops.attention_flops_per_token(
          cfg, args.seq_len)
      for per_row in args.segments_per_row:
        seconds = time_attention(cfg, args.batch, args.seq_len, per_row, args.steps)
        record = {"impl": impl, "max_segments": cap, "segments_per_row": per_row,
                  "ms_per_layer": round(seconds * 1e3, 4),
                  "tflops_per_s": round(attention_flops / seconds / 1e12, 3)}
        records.append(record)
        print(f"  {impl:<7}" + (f" max_segments={cap:<3}" if cap else " " * 17) +
              f" segments/row={'none' if per_row is None else per_row:<5}"
              f" {record['ms_per_layer']:9.3f} ms  {record['tflops_per_s']:8.2f} TFLOP/s")
        sys.stdout.flush()
  print(json.dumps({"device_kind": device.device_kind, "batch": args.batch,
                    "seq_len": args.seq_len, "heads": args.heads,
                    "kv_heads": base.num_kv_heads, "head_dim": args.head_dim,
                    "window": args.window, "dtype": args.dtype, "steps": args.steps,
                    "records": records}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
