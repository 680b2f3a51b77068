"""Reproduce APD's TMS results (docs/methods/apd.md §1.10) over several seeds and print a table.

  python scripts/reproduce_apd_tms.py --variant=5-2 --seeds=1,2,3 --workdir=runs/repro_5-2
  python scripts/reproduce_apd_tms.py --variant=40-10 --seeds=1,2,3 --workdir=runs/repro_40-10

Seed s trains the target with seed s and decomposes it with seed s. A target with a dead feature
is reported and still decomposed (its MMCS then counts only what the target represents).
"""
import json
import os

from absl import app, flags
import numpy as np

from paramdecomp.configs import apd_tms
from paramdecomp.configs import tms as tms_configs

from paramdecomp.core.cli import setup_logging
from paramdecomp.runs.decompose_apd import decompose
from paramdecomp.runs.targets import train_target

_VARIANT = flags.DEFINE_enum("variant", "5-2", ["5-2", "5-2-paper", "40-10"],
                             "APD variant (`apd_tms.py`; 5-2-paper: C = 5, no spare component).")
_SEEDS = flags.DEFINE_list("seeds", ["1", "2", "3"], "Seeds.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Root run directory.", required=True)
_STEPS = flags.DEFINE_integer("steps", None, "Override the APD steps (paper: 20k).")
PAPER = {"5-2": (0.998, 0.893), "40-10": (0.996, 0.935)}   # per target size


def reproduce(variant: str, seeds, root: str, steps=None) -> list[dict]:
  rows = []
  for seed in seeds:
    c = tms_configs.get_config(variant.removesuffix("-paper"))
    c.seed = seed
    tdir = os.path.join(root, f"target_seed{seed}")
    train_target(c, tdir)
    d = apd_tms.get_config(variant)
    d.seed, d.target_dir = seed, tdir
    if steps:
      d.optim.steps = steps
    s = decompose(d, os.path.join(root, f"apd_seed{seed}"))
    rows.append({"seed": seed, **s})
  return rows


def main(argv):
  del argv
  setup_logging()
  rows = reproduce(_VARIANT.value, [int(s) for s in _SEEDS.value], _WORKDIR.value, _STEPS.value)
  pm, pl = PAPER[_VARIANT.value.removesuffix("-paper")]
  print(f"\nAPD on TMS {_VARIANT.value} (paper: MMCS {pm}, ML2R {pl})")
  print(f"{'seed':>4} {'features':>9} {'MMCS':>7} {'ML2R':>7} {'L_min':>9} {'L_faith':>9}")
  for r in rows:
    print(f"{r['seed']:4d} {r['represented_features']:4d}/{r['n_features']:<4d} {r['mmcs']:7.4f} "
          f"{r['ml2r']:7.4f} {r['minimality']:9.2e} {r['faithfulness']:9.2e}")
  mm, ml = np.array([r["mmcs"] for r in rows]), np.array([r["ml2r"] for r in rows])
  print(f"mean {mm.mean():.4f} ± {mm.std():.4f}   {ml.mean():.4f} ± {ml.std():.4f}")
  with open(os.path.join(_WORKDIR.value, "reproduction.json"), "w") as f:
    json.dump(rows, f, indent=2)


if __name__ == "__main__":
  app.run(main)
