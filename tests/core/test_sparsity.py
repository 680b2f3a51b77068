import jax
import numpy as np
import pytest

from paramdecomp.core import sparsity


@pytest.mark.parametrize("b,c,k", [(64, 5, 0.211), (100, 40, 2.0), (7, 3, 3.0), (33, 10, 0.5)])
def test_batch_topk_keeps_the_largest_floor_kB(b, c, k):
  a = np.asarray(jax.random.normal(jax.random.PRNGKey(b), (b, c)))
  mask = np.asarray(sparsity.batch_topk_mask(a, k))
  n = int(k * b)
  assert mask.sum() == n
  assert set(np.unique(mask)) <= {0.0, 1.0}
  kept = np.sort(a[mask == 1])
  np.testing.assert_array_equal(kept, np.sort(a.ravel())[-n:])


@pytest.mark.parametrize("k", [1, 2, 4])
def test_topk_has_k_per_row_at_the_row_maxima(k):
  a = np.asarray(jax.random.normal(jax.random.PRNGKey(k), (50, 6)))
  mask = np.asarray(sparsity.topk_mask(a, k))
  np.testing.assert_array_equal(mask.sum(1), k)
  for row, mrow in zip(a, mask):
    np.testing.assert_array_equal(np.sort(row[mrow == 1]), np.sort(row)[-k:])


def test_batch_topk_rejects_impossible_k():
  a = np.zeros((4, 3))
  with pytest.raises(ValueError, match="batch top-k"):
    sparsity.batch_topk_mask(a, 0.1)
  with pytest.raises(ValueError, match="batch top-k"):
    sparsity.batch_topk_mask(a, 3.5)
