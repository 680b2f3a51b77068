"""A vmapped seed sweep trains each seed's target as the runner does (cross-path agreement)."""
import numpy as np

from paramdecomp.configs import apd_tms
from paramdecomp.configs import tms as tms_configs
from paramdecomp.runs import sweep, targets


def test_sweep_targets_match_train_target_seed_by_seed(tmp_path):
  c = tms_configs.get_config("5-2")
  c.optim.steps, c.run.steps_per_dispatch, c.run.log_every = 500, 500, 0
  stacked = sweep.tms_targets(c, [0, 3])
  for i, seed in enumerate([0, 3]):
    c.seed = seed
    one = targets.train_target(c, str(tmp_path / f"t{seed}"))
    for k in ("W", "b"):
      np.testing.assert_allclose(stacked[k][i], one[k], rtol=1e-5, atol=1e-6)
  # different seeds, different targets
  assert not np.allclose(stacked["W"][0], stacked["W"][1])


def test_a_sweep_from_the_ground_truth_starts_at_it():
  """With no steps the components are the start: every feature in its own component (MMCS and
  ML2R 1), the spare at 1e-3 of a random init, and the loss terms those of the ground truth."""
  tc = tms_configs.get_config("5-2")
  tc.optim.steps = 500
  dc = apd_tms.get_config("5-2")
  dc.optim.steps = 0
  params = sweep.tms_targets(tc, [1])
  row, = sweep.apd_tms(tc, dc, params, [1], from_ground_truth=True)
  np.testing.assert_allclose([row["mmcs"], row["ml2r"]], [1.0, 1.0], atol=1e-5)
  assert (row["merged"], row["split"]) == (0, 0)
  assert row["loss_faithfulness"] < 1e-8 < row["loss_simplicity"]


def test_restarts_keep_the_lowest_loss_start_of_each_target():
  """Restarts: the first start of each target is the plain sweep's run of it (same key, same
  target, even for the second target of the stack), the others differ, and the row is the start
  with the lowest loss. No steps: the starts are the random inits."""
  tc = tms_configs.get_config("5-2")
  tc.optim.steps = 500
  dc = apd_tms.get_config("5-2")
  dc.optim.steps = 0
  params = sweep.tms_targets(tc, [1, 2])
  plain = sweep.apd_tms(tc, dc, params, [1, 2])
  rows = sweep.apd_tms(tc, dc, params, [1, 2], restarts=3)
  for p, r in zip(plain, rows):
    assert len(r["restart_loss"]) == 3
    np.testing.assert_allclose(r["restart_loss"][0], p["loss_total"], rtol=1e-6)
    assert len(set(r["restart_loss"])) == 3
    assert r["loss_total"] == min(r["restart_loss"])
    assert r["mmcs"] == r["restart_mmcs"][r["restart"]]
  # a later sweep adding starts 1 and 2 reproduces them, and numbers its kept start as they are
  later = sweep.apd_tms(tc, dc, params, [1, 2], restarts=3, first_start=1)
  for r, l in zip(rows, later):
    np.testing.assert_allclose(l["restart_loss"], r["restart_loss"][1:], rtol=1e-6)
    assert l["restart"] == 1 + int(np.argmin(r["restart_loss"][1:]))
