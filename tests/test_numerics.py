"""The reordering tolerance: real reorderings pass, near-zero elements included; a wrong
result fails."""
import numpy as np
import pytest

from tests import numerics


def _sums_in_two_orders(n=4096, rows=256):
  rng = np.random.default_rng(0)
  terms = rng.standard_normal((rows, n)).astype(np.float32)
  terms[::2, -1] = -terms[::2, :-1].astype(np.float64).sum(1)  # every other row cancels to ~0
  forward = terms.sum(1, dtype=np.float32)
  pairwise = terms[:, ::-1].reshape(rows, 64, -1).sum(2).sum(1)
  return forward, pairwise


def test_a_reordered_sum_passes_even_where_it_cancels():
  forward, pairwise = _sums_in_two_orders()
  assert not np.array_equal(forward, pairwise)
  with pytest.raises(AssertionError):  # the fixed tolerance that failed under load
    np.testing.assert_allclose(forward, pairwise, rtol=1e-4, atol=1e-7)
  numerics.assert_close_up_to_reordering({"g": forward}, {"g": pairwise}, terms=4096)


def test_a_wrong_result_fails():
  want = np.linspace(-1, 1, 1000, dtype=np.float32)
  got = want.copy()
  got[500] += 1e-3
  with pytest.raises(AssertionError, match="g"):
    numerics.assert_close_up_to_reordering({"g": got}, {"g": want}, terms=1024)
