"""Input pipeline throughput at the 150M config's batch shape (512 x 1024), on this machine.

    python -m editseq.perf.bench_input                       # full default data, lintseq task
    python -m editseq.perf.bench_input --data_dir default:small --steps 10
    python -m editseq.perf.bench_input --max_segments_per_row 8   # packing under a cuDNN-style cap

Prints batches/s, tokens/s, packing efficiency (share of non-padding slots), examples per row
(what a cap on them, such as cuDNN attention's `model.max_segments`, costs) and loss-token
share, then as its last line one JSON object with the same figures and what a TPU v4-8 needs.

What a TPU v4-8 step needs: training FLOPs per token ~ 6 N + 12 L T d (N = 151.9M parameters,
L = 12 layers, T = 1024, d = 768) = 1.02 GFLOP, so a 512 x 1024 step is 5.4e14 FLOPs. A v4-8
is one host with 4 chips x 275 TFLOP/s (bf16); at 40% MFU a step takes ~1.2 s, so the host
must deliver ~0.8 batches/s (~430k tokens/s). The pipeline keeps up when it is several times
faster than that on one core (batches are built in a background thread while the step runs).
Data generation and tokenization (the token store) are one-off costs, reported apart
(near zero once cached).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from data_gen import quiet_logs

TPU_V4_CHIP_FLOPS = 275e12
TPU_V4_8_CHIPS = 4
MFU = 0.40
PARAMS_150M, LAYERS_150M, D_MODEL_150M = 151.9e6, 12, 768


def tpu_step_estimate(seq_len: int, batch: int) -> dict:
  flops_per_token = 6 * PARAMS_150M + 12 * LAYERS_150M * seq_len * D_MODEL_150M
  step_s = flops_per_token * seq_len * batch / (TPU_V4_CHIP_FLOPS * TPU_V4_8_CHIPS * MFU)
  return {"tpu_v4_8_step_s": round(step_s, 3), "needed_batches_per_s": round(1 / step_s, 3),
          "needed_tokens_per_s": round(seq_len * batch / step_s)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m editseq.perf.bench_input", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", default="editseq_lintseq_instruct")
  parser.add_argument("--data_dir", default="", help='"" = full default data, default:small')
  parser.add_argument("--vocab_path", default="", help='"" = the default tokenizer')
  parser.add_argument("--seq_len", type=int, default=1024)
  parser.add_argument("--batch", type=int, default=512)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--prefetch", type=int, default=0,
                      help="background batches (0 measures the producer alone)")
  parser.add_argument("--max_segments_per_row", type=int, default=None,
                      help="most examples packed into a row (default: no cap)")
  args = parser.parse_args(argv)
  if args.max_segments_per_row is not None and args.max_segments_per_row < 1:
    parser.error("--max_segments_per_row must be >= 1")

  from editseq import config_sections  # pylint: disable=g-import-not-at-top
  from editseq import default_data, input_pipeline, tokenizer  # pylint: disable=g-import-not-at-top
  config = config_sections.default_config()
  config.data.update(task=args.task, data_dir=args.data_dir, seq_len=args.seq_len,
                     global_batch_size=args.batch, max_segments_per_row=args.max_segments_per_row)
  try:
    vocab = default_data.vocabulary(args.vocab_path)
    start = time.perf_counter()
    default_data.resolve_data_dir(args.data_dir)  # generation on first use, timed apart
    data_s = time.perf_counter() - start
    start = time.perf_counter()
    it = input_pipeline.make_train_iterator(config, vocab, process_index=0, process_count=1,
                                            prefetch=args.prefetch)
    setup_s = time.perf_counter() - start
  except (input_pipeline.DataError, tokenizer.VocabularyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  start = time.perf_counter()
  it.source.plan(0)
  plan_s = time.perf_counter() - start
  next(it)  # warm-up
  non_pad = loss = 0
  segments = []
  start = time.perf_counter()
  for _ in range(args.steps):
    batch = next(it)
    non_pad += int(np.count_nonzero(batch["segment_ids"]))
    loss += int(batch["loss_mask"].sum())
    segments.append(batch["segment_ids"].max(axis=1))  # ids count 1, 2, ... within a row
  elapsed = time.perf_counter() - start
  segments = np.concatenate(segments)
  it.close()
  slots = args.steps * args.batch * args.seq_len
  result = {
      "task": args.task, "batch": args.batch, "seq_len": args.seq_len, "steps": args.steps,
      "examples": sum(len(p.store) for p in it.source.parts),
      "units": it.source.num_units,
      "truncated": sum(p.units.num_truncated for p in it.source.parts),
      "dropped": sum(p.units.num_dropped for p in it.source.parts),
      "data_generation_s": round(data_s, 2), "tokenize_and_open_s": round(setup_s, 2),
      "epoch_plan_s": round(plan_s, 3),
      "batches_per_s": round(args.steps / elapsed, 2),
      "tokens_per_s": round(slots / elapsed),
      "packing_efficiency": round(non_pad / slots, 4),
      "max_segments_per_row": args.max_segments_per_row,
      "segments_per_row": {"median": float(np.median(segments)),
                           "p90": float(np.percentile(segments, 90)),
                           "max": int(segments.max())},
      "loss_token_share": round(loss / slots, 4),
      **tpu_step_estimate(args.seq_len, args.batch),
  }
  result["keeps_up"] = result["batches_per_s"] >= result["needed_batches_per_s"]
  print(f"{result['batches_per_s']} batches/s, {result['tokens_per_s']:,} tokens/s "
        f"({args.batch} x {args.seq_len}); packing efficiency {result['packing_efficiency']:.1%}"
        f" (examples per row: median {result['segments_per_row']['median']:g}, 90th percentile "
        f"{result['segments_per_row']['p90']:g}, max {result['segments_per_row']['max']})"
        f"; a TPU v4-8 step at 40% MFU needs {result['needed_batches_per_s']} batches/s")
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  quiet_logs.install()
  sys.exit(main())
