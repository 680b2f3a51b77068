"""How often a TMS target recipe, or APD or SPD on it, succeeds over many seeds, in one vmapped
program (`paramdecomp.runs.sweep`): every seed's target, and with --config every seed's
decomposition.

  python scripts/sweep_tms_seeds.py --target=paramdecomp/configs/tms.py:5-2 --seeds=10  # targets
  python scripts/sweep_tms_seeds.py --target=paramdecomp/configs/tms.py:5-2 --seeds=10 \\
      --config=paramdecomp/configs/apd_tms.py:5-2 [--config.apd.exact_topk=True]
  python scripts/sweep_tms_seeds.py --target=paramdecomp/configs/tms.py:10-4 --seeds=3 \\
      --config=paramdecomp/configs/apd_tms.py:10-4 --merge_costs=45    # no training
Prints, per seed, the features the target represents and (with --config) MMCS / ML2R; seed s
trains target s and decomposes it with key s + --seed_offset, and gives the final loss terms;
--from_ground_truth starts the decompositions at the targets' ground truth instead;
--restarts=R decomposes each target from R random starts and keeps the lowest-loss one
(--first_start=F runs only starts F..R-1, to add starts to an earlier sweep; every start's
loss, MMCS, merged and split are listed). An SPD config (its `method`) runs SPD instead, here
on targets 0-2 from three starts each, stopped at 12k of the 40k steps (--steps):

  python scripts/sweep_tms_seeds.py --target=paramdecomp/configs/tms.py:5-2 --seeds=3 \\
      --restarts=3 --steps=12000 --config=paramdecomp/configs/spd_tms.py:5-2 \\
      [--config.spd.tied_updates=shared]
With --merge_costs=K it decomposes nothing: it prints APD's loss at each target's ground-truth
decomposition and how much it rises when two features share a component, for K feature pairs.
--paper_bias trains the targets from torch's default decoder bias (the paper's recipe) instead
of zero.
"""
import json

from absl import app, flags
from ml_collections import config_flags
import numpy as np

from paramdecomp.core import cli
from paramdecomp.runs import sweep

_TARGET = config_flags.DEFINE_config_file("target", "paramdecomp/configs/tms.py:5-2",
                                           "Target config (a TMS one).")
_SEEDS = flags.DEFINE_integer("seeds", 10, "Seeds 0..n-1.")
_OFFSET = flags.DEFINE_integer("seed_offset", 0, "Added to the decomposition seeds.")
_OUT = flags.DEFINE_string("out", None, "Write the rows as JSON here.")
_SAVE = flags.DEFINE_string("save", None, "With --config: write the targets' W, the components "
                            "and their use to this .npz file.")
_MERGE = flags.DEFINE_integer("merge_costs", 0, "With --config: instead of decomposing, APD's "
                              "loss at the ground truth and with each of this many feature pairs "
                              "merged into one component.")
_FROM_GT = flags.DEFINE_bool("from_ground_truth", False, "With --config: start every "
                             "decomposition at the target's ground truth instead of at random.")
_RESTARTS = flags.DEFINE_integer("restarts", 1, "With --config: decompose each target from this "
                                 "many random starts and keep the one with the lowest loss.")
_FIRST = flags.DEFINE_integer("first_start", 0, "With --restarts: run only starts first_start.."
                              "restarts-1 (their losses compare with an earlier sweep's).")
_STEPS = flags.DEFINE_integer("steps", None, "With an SPD --config: stop each decomposition "
                              "after this many steps of its schedule (default: all of it).")
_CONFIG = config_flags.DEFINE_config_file("config", None, "APD or SPD config (optional).")


def main(argv):
  del argv
  tc = _TARGET.value
  seeds = list(range(_SEEDS.value))
  params = sweep.tms_targets(tc, seeds)
  rep = [int(v) for v in (np.linalg.norm(np.asarray(params["W"]), axis=1) >= 0.5).sum(1)]
  rows = [{"seed": s, "represented_features": r} for s, r in zip(seeds, rep)]
  n = tc.model.n_features
  if _MERGE.value:
    if _CONFIG.value is None:
      raise app.UsageError("--merge_costs needs --config (the APD config whose loss to use)")
    return _print_merge_costs(sweep.apd_tms_merge_costs(tc, _CONFIG.value, params, seeds,
                                                        _MERGE.value), rep, n)
  if _CONFIG.value is not None and _CONFIG.value.method == "spd":
    if _SAVE.value or _FROM_GT.value:
      raise app.UsageError("--save and --from_ground_truth are for APD configs")
    rows = sweep.spd_tms(tc, _CONFIG.value, params, seeds, _OFFSET.value,
                         restarts=_RESTARTS.value, first_start=_FIRST.value,
                         steps=_STEPS.value)
  elif _CONFIG.value is not None:
    if _STEPS.value is not None:
      raise app.UsageError("--steps is for SPD configs (an APD sweep runs its whole schedule)")
    rows = sweep.apd_tms(tc, _CONFIG.value, params, seeds, _OFFSET.value, _SAVE.value,
                         from_ground_truth=_FROM_GT.value,
                         restarts=_RESTARTS.value, first_start=_FIRST.value)
  print(f"TMS {n}-{tc.model.n_hidden}: every feature represented on "
        f"{sum(r['represented_features'] == n for r in rows)} of {len(rows)} seeds")
  for r in rows:
    print(" ".join(f"{k} {v:.{6 if k.startswith('loss_') else 4}f}" if isinstance(v, float)
                   else f"{k} {v}" for k, v in r.items()))
  if _CONFIG.value is not None:
    mm = np.array([r["mmcs"] for r in rows])
    print(f"MMCS >= 0.99 on {(mm >= 0.99).sum()} of {len(mm)}, >= 0.98 on {(mm >= 0.98).sum()}; "
          f"with merged subcomponents {sum(r['merged'] > 0 for r in rows)}, with split features "
          f"{sum(r['split'] > 0 for r in rows)}")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(rows, f, indent=2)


def _print_merge_costs(rows, represented, n):
  for r, k in zip(rows, represented):
    gt, d = r["ground_truth"], r["pairs"]
    tot = np.array([p["delta_total"] for p in d])
    worst = d[int(np.argmin(tot))]
    print(f"seed {r['seed']} ({k} of {n} features represented): ground truth total "
          f"{gt['total']:.5f} (minimality {gt['minimality']:.5f}, simplicity "
          f"{gt['simplicity']:.5f}); merged pairs lower than it: {(tot < 0).sum()} of {len(d)}; "
          f"rise of the total min {tot.min():+.5f} (pair {worst['pair']}, cos "
          f"{worst['cos']:+.2f}) median {np.median(tot):+.5f} max {tot.max():+.5f}; median rise "
          f"of minimality {np.median([p['delta_minimality'] for p in d]):+.6f}, simplicity "
          f"{np.median([p['delta_simplicity'] for p in d]):+.5f}")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
