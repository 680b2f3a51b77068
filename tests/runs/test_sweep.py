"""A vmapped seed sweep trains and decomposes each seed's target as the runner does (cross-path
agreement)."""
import numpy as np
import pytest

from paramdecomp.configs import apd_tms, spd_tms
from paramdecomp.configs import tms as tms_configs
from paramdecomp.runs import decompose_spd, restarts, sweep, targets


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
    assert r["merged"] == r["restart_merged"][r["restart"]]
  # a later sweep adding starts 1 and 2 reproduces them, and numbers its kept start as they are
  later = sweep.apd_tms(tc, dc, params, [1, 2], restarts=3, first_start=1)
  for r, l in zip(rows, later):
    np.testing.assert_allclose(l["restart_loss"], r["restart_loss"][1:], rtol=1e-6)
    assert l["restart"] == 1 + int(np.argmin(r["restart_loss"][1:]))


def test_an_spd_sweeps_first_start_is_the_runners_run_of_that_seed(tmp_path):
  """sweep.spd_tms on a saved target against decompose_spd on it (cross-path): the seed's first
  start ends where the runner's run of that seed ends (same MMCS, and the same loss on the
  fixed batches and mask keys of restarts.final_losses); a second start differs."""
  tc = tms_configs.get_config("5-2")
  tc.seed, tc.optim.steps, tc.run.steps_per_dispatch, tc.run.log_every = 1, 500, 500, 0
  tdir, wdir = str(tmp_path / "target"), str(tmp_path / "spd")
  targets.train_target(tc, tdir)
  dc = spd_tms.get_config("5-2")
  dc.target_dir, dc.seed, dc.batch_size, dc.spd.C = tdir, 1, 256, 8
  dc.optim.steps, dc.run.steps_per_dispatch, dc.run.checkpoint_every = 40, 20, 40
  summary = decompose_spd.decompose(dc, wdir)
  _, _, raw = targets.load_target(tdir)
  params = sweep.stack([raw])
  (row,) = sweep.spd_tms(tc, dc, params, [1], restarts=2)
  runner, = restarts.final_losses([wdir])
  np.testing.assert_allclose(row["restart_loss"][0], runner["loss"], rtol=1e-6)
  assert row["restart_loss"][1] != row["restart_loss"][0]
  np.testing.assert_allclose(row["restart_mmcs"][0], summary["mmcs"], rtol=1e-6)
  with pytest.raises(ValueError, match="steps=41"):
    sweep.spd_tms(tc, dc, params, [1], steps=41)
