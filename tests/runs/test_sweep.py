"""A vmapped seed sweep trains each seed's target as the runner does (cross-path agreement)."""
import numpy as np

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
