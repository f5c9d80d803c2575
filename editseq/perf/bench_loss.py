"""Speed and memory of the output head + token loss, whole-sequence against fused chunks.

    python -m editseq.perf.bench_loss                          # 150M's head: 4 x 1024 tokens, d 768, vocab 50304
    python -m editseq.perf.bench_loss --batch 8 --chunks 0,128,256,1024

Times the jitted value and gradient (with respect to the hidden states and the head) of
`editseq.losses.head_loss` on random bf16 hidden states and an fp32 head, as the trainer runs it,
for each chunk size (0 = all logits at once), in interleaved rounds so that machine load falls
on all of them; each figure is the median round. Also prints XLA's temporary memory for each
compiled gradient and the largest gradient difference from the whole-sequence one. The last
line of output is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from editseq import losses


def _parse_chunks(text: str) -> list[int]:
  try:
    chunks = [int(c) for c in text.split(",")]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
  if not chunks or min(chunks) < 0:
    raise argparse.ArgumentTypeError(f"chunk sizes must be >= 0, got {text!r}")
  return chunks


def benchmark(batch: int, seq_len: int, d_model: int, vocab: int, chunks: list[int],
              rounds: int, softcap: float = 0.0, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.standard_normal((batch, seq_len, d_model)), jnp.bfloat16)
  head = jnp.asarray(rng.standard_normal((d_model, vocab)) * d_model ** -0.5, jnp.float32)
  targets = jnp.asarray(rng.integers(0, vocab, (batch, seq_len)), jnp.int32)
  mask = jnp.asarray(rng.uniform(size=(batch, seq_len)) < 0.9, jnp.float32)
  steps, temp_bytes, outputs = {}, {}, {}
  for chunk in chunks:
    grad_fn = jax.value_and_grad(
        lambda h, w, c=chunk: losses.head_loss(h, w, targets, mask, softcap, c), argnums=(0, 1))
    compiled = jax.jit(grad_fn).lower(hidden, head).compile()
    temp_bytes[chunk] = compiled.memory_analysis().temp_size_in_bytes
    steps[chunk] = compiled
    outputs[chunk] = jax.block_until_ready(compiled(hidden, head))
  times = {chunk: [] for chunk in chunks}
  for _ in range(rounds):
    for chunk, compiled in steps.items():
      start = time.perf_counter()
      jax.block_until_ready(compiled(hidden, head))
      times[chunk].append(time.perf_counter() - start)
  ref_loss, (ref_dh, ref_dw) = outputs[chunks[0]]
  record = {"batch": batch, "seq_len": seq_len, "d_model": d_model, "vocab": vocab,
            "softcap": softcap, "rounds": rounds, "device_kind": jax.devices()[0].device_kind,
            "results": []}
  for chunk in chunks:
    loss, (dh, dw) = outputs[chunk]
    rel = lambda a, b: float(jnp.linalg.norm((a - b).astype(jnp.float32)) /
                             jnp.linalg.norm(b.astype(jnp.float32)))
    record["results"].append({
        "chunk_size": chunk, "step_s": statistics.median(times[chunk]),
        "step_s_rounds": times[chunk], "temp_bytes": temp_bytes[chunk],
        "loss_rel_diff": abs(float(loss) - float(ref_loss)) / abs(float(ref_loss)),
        "d_hidden_rel_diff": rel(dh, ref_dh), "d_head_rel_diff": rel(dw, ref_dw)})
  return record


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m editseq.perf.bench_loss", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq_len", type=int, default=1024)
  parser.add_argument("--d_model", type=int, default=768)
  parser.add_argument("--vocab", type=int, default=50304)
  parser.add_argument("--softcap", type=float, default=0.0, help="final-logit soft-cap (0: none)")
  parser.add_argument("--chunks", type=_parse_chunks, default=[0, 256],
                      help="comma-separated chunk sizes; the first is the reference (default 0,256)")
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args(argv)
  for name in ("batch", "seq_len", "d_model", "vocab", "rounds"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1")
  record = benchmark(args.batch, args.seq_len, args.d_model, args.vocab, args.chunks,
                     args.rounds, args.softcap)
  base = record["results"][0]["step_s"]
  print(f"head + loss, value and gradient: {args.batch} x {args.seq_len} tokens, d {args.d_model}, "
        f"vocab {args.vocab}, on {record['device_kind']} (median of {args.rounds} rounds)")
  print(f"{'chunk':>6}{'s/step':>9}{'speedup':>9}{'XLA temp':>11}{'grad rel diff':>15}")
  for r in record["results"]:
    print(f"{r['chunk_size'] or 'whole':>6}{r['step_s']:>9.3f}{base / r['step_s']:>8.2f}x"
          f"{r['temp_bytes'] / 2**20:>8.0f} MiB{max(r['d_hidden_rel_diff'], r['d_head_rel_diff']):>15.1e}")
  record["command"] = " ".join(["python -m editseq.perf.bench_loss", *(argv or sys.argv[1:])])
  print(json.dumps(record))
  return 0


if __name__ == "__main__":
  sys.exit(main())
