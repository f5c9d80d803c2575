"""Per-problem measures of the n samples the paper's argument rests on: how many parse, how many
are lint-clean, how many distinct programs they hold, and how alike they are.

- parses: `ast.parse` accepts the program.
- lint_clean: it parses and pyflakes reports nothing (pyflakes is LintSeq's linter).
- distinct: distinct programs after normalising each parsed one with `ast.unparse(ast.parse(.))`
  (comments, formatting and quoting no longer count); each unparsable program counts as itself.
- similarity: the mean over pairs of samples of difflib's `SequenceMatcher.ratio` on the
  normalised texts' lines (1.0 with fewer than two samples).
"""
from __future__ import annotations

import ast
import difflib
import itertools
import statistics
from collections.abc import Mapping, Sequence

from pyflakes import checker as pyflakes_checker

MEASURES = ("parse_rate", "lint_clean_rate", "distinct", "similarity")


def normalise(program: str) -> tuple[str, bool, bool]:
  """(normalised text, parses, lint clean) of one program."""
  try:
    tree = ast.parse(program)
  except (SyntaxError, ValueError, RecursionError, MemoryError):
    return program, False, False
  clean = not pyflakes_checker.Checker(tree, filename="<sample>").messages
  try:
    return ast.unparse(tree), True, clean
  except (RecursionError, ValueError):
    return program, True, clean


def problem_measures(programs: Sequence[str]) -> dict[str, float]:
  """The measures of one problem's samples (`MEASURES`)."""
  if not programs:
    raise ValueError("no programs")
  normalised = [normalise(p) for p in programs]
  texts = [text.splitlines() for text, _, _ in normalised]
  pairs = list(itertools.combinations(texts, 2))
  similarity = (statistics.fmean(difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
                                 for a, b in pairs) if pairs else 1.0)
  return {"parse_rate": sum(p for _, p, _ in normalised) / len(programs),
          "lint_clean_rate": sum(c for _, _, c in normalised) / len(programs),
          "distinct": len({text for text, _, _ in normalised}),
          "similarity": similarity}


def measures_by_problem(programs: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
  """{task id: measures} for {task id: its samples' programs}."""
  return {task_id: problem_measures(p) for task_id, p in programs.items()}


def summarize(by_problem: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
  """Each measure's mean over problems."""
  return {f"mean_{m}": statistics.fmean(v[m] for v in by_problem.values()) for m in MEASURES}
