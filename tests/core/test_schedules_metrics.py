"""Schedules, data generator and metrics against their definitions (docs/methods/oracles.md §6.1)"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paramdecomp.core.metrics import mmcs_ml2r, share_structure
from paramdecomp.core.schedules import lr_schedule
from paramdecomp.toy_models import data


def test_schedules_at_chosen_steps():
  steps, warm = 1000, 100
  for kind in ("constant", "linear", "cosine", "exponential"):
    s = lr_schedule(2.0, steps, 0.1, kind, halflife=50)
    assert float(s(0)) == 0.0
    np.testing.assert_allclose(s(50), 1.0, rtol=1e-6)      # halfway through warmup
    np.testing.assert_allclose(s(warm), 2.0, rtol=1e-6)    # warmup end: lr_max
  np.testing.assert_allclose(lr_schedule(2.0, steps, 0.1, "linear")(steps), 0.0, atol=1e-6)
  np.testing.assert_allclose(lr_schedule(2.0, steps, 0.1, "cosine")(steps - 1), 0.0, atol=1e-6)
  np.testing.assert_allclose(lr_schedule(2.0, steps, 0.1, "cosine")(warm + 449),
                             2.0 * math.cos(math.pi / 2 * 449 / 899), rtol=1e-5)
  np.testing.assert_allclose(lr_schedule(2.0, steps, 0.1, "exponential", 50)(warm + 50), 1.0,
                             rtol=1e-5)
  np.testing.assert_allclose(lr_schedule(3.0, steps, 0.0, "constant")(0), 3.0)
  with pytest.raises(ValueError, match="unknown schedule"):
    lr_schedule(1.0, 10, 0.0, "cosin")


def test_sparse_features_rate_and_range():
  x = np.asarray(data.sparse_features(jax.random.PRNGKey(0), 200_000, 5, 0.05, 0.2, 0.7))
  rate = (x != 0).mean()
  se = math.sqrt(0.05 * 0.95 / x.size)
  assert abs(rate - 0.05) < 4 * se
  active = x[x != 0]
  assert active.min() >= 0.2 and active.max() <= 0.7
  assert (np.abs(x).sum(1) == 0).any()   # all-zero rows are kept


def test_exactly_n_active():
  x = np.asarray(data.exactly_n_active(jax.random.PRNGKey(1), 1000, 7, 3))
  np.testing.assert_array_equal((x != 0).sum(1), 3)
  # every feature is chosen about equally often
  counts = (x != 0).sum(0)
  assert counts.min() > 0.8 * 3000 / 7


def test_mmcs_ml2r_oracles():
  w = jax.random.normal(jax.random.PRNGKey(2), (3, 6))
  truth = jnp.stack([w * jnp.eye(6)[c] for c in range(6)])  # W[:, c] e_c^T
  mmcs, ml2r = mmcs_ml2r(w, truth)
  np.testing.assert_allclose([mmcs, ml2r], [1.0, 1.0], rtol=1e-10)
  mmcs, ml2r = mmcs_ml2r(w, 0.9 * truth)
  np.testing.assert_allclose([mmcs, ml2r], [1.0, 0.9], rtol=1e-10)
  perm = jax.random.permutation(jax.random.PRNGKey(3), 6)
  noisy = truth + 0.1 * jax.random.normal(jax.random.PRNGKey(4), truth.shape)
  np.testing.assert_allclose(mmcs_ml2r(w, noisy[perm]), mmcs_ml2r(w, noisy), rtol=1e-12)
  # signed cosine: flipping every component makes each best match anti-aligned
  assert float(mmcs_ml2r(w, -truth)[0]) < 0.5


def test_share_structure_counts_merged_components_and_split_features():
  rng = np.random.default_rng(0)
  target = rng.normal(size=(2, 4))                      # four feature columns
  one = lambda j, scale=1.0: np.where(np.arange(4) == j, target * scale, 0.0)
  # component 0 carries features 0 and 1 (merged); feature 2 is split 0.6 / 0.4 over components
  # 1 and 2; feature 3 has component 3 alone, with a 0.1 remnant on component 4 (not a split)
  comps = np.stack([one(0) + one(1), one(2, 0.6), one(2, 0.4), one(3, 0.9), one(3, 0.1),
                    np.zeros((2, 4))])
  assert share_structure(target, comps) == {"merged": 1, "split": 1}
  clean = np.stack([one(j) for j in range(4)])
  assert share_structure(target, clean) == {"merged": 0, "split": 0}
