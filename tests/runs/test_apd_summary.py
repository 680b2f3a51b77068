"""The TMS measures of an APD run against hand-built components (closed-form answers)."""
import numpy as np

from paramdecomp.runs import apd_summary


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
