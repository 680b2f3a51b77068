"""The TMS measures of an APD run against hand-built components (closed-form answers)."""
import jax
import jax.numpy as jnp
import numpy as np

from paramdecomp.configs import apd_tms
from paramdecomp.configs import tms as tms_configs
from paramdecomp.core import lowrank
from paramdecomp.runs import apd_summary, targets
from paramdecomp.toy_models import tms


def test_tms_measures_leave_an_unused_copy_of_w_out_of_ml2r_in_use():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(2, 5))
  one = lambda j: np.where(np.arange(5) == j, w, 0.0)
  # five used components at 0.9 of their feature, slightly off its direction; a sixth, never
  # selected, holds 0.1 of every column exactly: the paper's argmax picks it everywhere
  used = [0.9 * one(j) + 0.02 * np.where(np.arange(5) == j, rng.normal(size=(2, 1)), 0.0)
          for j in range(5)]
  comps = np.stack(used + [0.1 * w])
  m = apd_summary.tms_measures(w, comps, np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.0]))
  np.testing.assert_allclose(m["ml2r"], 0.1, rtol=1e-6)
  np.testing.assert_allclose(m["mmcs"], 1.0, rtol=1e-6)
  assert 0.88 < m["ml2r_in_use"] < 0.92 and 0.99 < m["mmcs_in_use"] < 1.0
  assert (m["merged"], m["split"]) == (0, 0)


def test_ground_truth_factors_hold_one_feature_each_and_a_merge_keeps_the_sum():
  w = np.random.default_rng(2).normal(size=(2, 5))
  gt = tms.ground_truth_factors(w, C=6, m=3)
  comps = np.asarray(lowrank.components(gt))                       # [6, 2, 5]
  np.testing.assert_allclose(comps.sum(0), w, atol=1e-6)
  for i in range(5):
    np.testing.assert_allclose(comps[i], np.where(np.arange(5) == i, w, 0.0), atol=1e-6)
  assert not comps[5].any()
  merged = tms.ground_truth_factors(w, C=6, m=3, merge=(1, 3))
  mc = np.asarray(lowrank.components(merged))
  np.testing.assert_allclose(mc.sum(0), w, atol=1e-6)
  np.testing.assert_allclose(mc[1], np.where(np.isin(np.arange(5), [1, 3]), w, 0.0), atol=1e-6)
  assert not mc[3].any()
  # in SVD form its factorised Schatten-1 penalty is the nuclear norm of the two columns
  nuclear = np.linalg.svd(w[:, [1, 3]], compute_uv=False).sum()
  np.testing.assert_allclose(lowrank.schatten(merged, 1.0)[1], nuclear, rtol=1e-5)


def test_merging_two_features_raises_apds_loss_on_the_pentagon():
  """TMS 5-2's known solution (five unit columns 72 degrees apart): the ground truth is exact
  (faithfulness 0) and every merged pair costs APD's loss more, through simplicity: a merged
  component is selected whenever either feature is active and carries both columns."""
  angles = 2 * np.pi * np.arange(5) / 5
  params = {"W": jnp.asarray(np.stack([np.cos(angles), np.sin(angles)])),
            "b": jnp.full((5,), -0.1)}
  tc = tms_configs.get_config("5-2")
  cfg = apd_tms.get_config("5-2").apd
  xs = [targets.batch(jax.random.PRNGKey(i), tc, 1024) for i in range(4)]
  out = apd_summary.merge_costs(tms.apply, params, cfg, xs, [(0, 1), (0, 2), (3, 4)])
  assert out["ground_truth"]["faithfulness"] < 1e-12
  for row in out["pairs"]:
    assert row["delta_total"] > 0 and row["delta_simplicity"] > 0, row
