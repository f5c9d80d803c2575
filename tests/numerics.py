"""Tolerances for comparing fp32 results that differ only in the order of their sums.

Sharding a computation (or tiling it into a kernel) changes the order in which its reductions
add terms. Rounding then moves a sum of n terms by about eps * sqrt(n) times the terms' size,
and that size is the tensor's scale, not the element's own value: an element that cancels to
near zero carries the same absolute error as its neighbours, which a fixed atol or an rtol does
not allow for (2 of 4096 splash-attention gradient elements off by 2.5e-6 failed atol=1e-6).
"""
import math

import jax
import numpy as np

FP32_EPS = float(np.finfo(np.float32).eps)
# Rounding errors of a reordered sum behave like a random walk of n steps of up to eps/2 each;
# a few standard deviations of margin covers every element of tensors of thousands of elements.
SAFETY = 8.0


def reordering_atol(want, terms: int) -> float:
  """Absolute difference that reordering fp32 sums of `terms` terms can explain in `want`."""
  scale = float(np.max(np.abs(np.asarray(want, np.float64)), initial=0.0))
  return SAFETY * FP32_EPS * math.sqrt(terms) * scale


def assert_close_up_to_reordering(got, want, *, terms: int) -> None:
  """Every leaf of the pytrees `got` and `want` agrees to within `reordering_atol`."""
  def check(path, a, b):
    np.testing.assert_allclose(a, b, rtol=0, atol=reordering_atol(b, terms),
                               err_msg=jax.tree_util.keystr(path))
  jax.tree_util.tree_map_with_path(check, got, want)
