"""eval.measures on real HumanEval programs: canonical solutions and deliberate variants."""
import pytest

from eval import benchmarks, measures


@pytest.fixture(scope="module")
def problem():
  return benchmarks.load_benchmark("humaneval")[0]


def test_reformatted_copies_are_one_program(problem):
  program = problem.prompt + problem.canonical_solution
  reformatted = program.replace("    return False", "    return (False)  # done")
  got = measures.problem_measures([program, reformatted, program])
  assert got == {"parse_rate": 1.0, "lint_clean_rate": 1.0, "distinct": 1, "similarity": 1.0}


def test_broken_unlinted_and_different_programs_count(problem):
  program = problem.prompt + problem.canonical_solution
  broken = problem.prompt + "    for idx in\n"
  unused_name = problem.prompt + "    return undefined_name\n"
  different = problem.prompt + "    return any(abs(a - b) < threshold for a in numbers for b in " \
      "numbers if a is not b)\n"
  got = measures.problem_measures([program, broken, unused_name, different])
  assert got["parse_rate"] == 0.75
  assert got["lint_clean_rate"] == 0.5  # the syntax error and the undefined name
  assert got["distinct"] == 4
  assert 0.0 < got["similarity"] < 1.0
  assert measures.problem_measures([program])["similarity"] == 1.0


def test_summary_averages_problems(problem):
  program = problem.prompt + problem.canonical_solution
  by_problem = measures.measures_by_problem({"a": [program, program], "b": ["x = (", program]})
  summary = measures.summarize(by_problem)
  assert summary["mean_parse_rate"] == 0.75 and summary["mean_distinct"] == 1.5
  with pytest.raises(ValueError, match="no programs"):
    measures.problem_measures([])
