"""`make demo`: train a TMS 5-2 target, decompose it with APD, compare with the paper.

  python scripts/demo.py [--workdir=runs/demo-...] [--steps=20000]
"""
import os
import time

from absl import app, flags

from paramdecomp.configs import apd_tms
from paramdecomp.configs import tms as tms_configs

from paramdecomp.core.cli import setup_logging
from paramdecomp.toy_models import tms
from paramdecomp.runs.decompose_apd import decompose
from paramdecomp.runs.targets import train_target

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/demo-<time>).")
_STEPS = flags.DEFINE_integer("steps", 20_000, "APD steps (paper: 20k).")
PAPER = {"mmcs": 0.998, "ml2r": 0.893}


def main(argv):
  del argv
  setup_logging()
  root = _WORKDIR.value or os.path.join("runs", time.strftime("demo-%Y%m%d-%H%M%S"))
  t0 = time.time()
  for seed in range(10):
    c = tms_configs.get_config("5-2")
    c.seed = seed
    target_dir = os.path.join(root, f"target_seed{seed}")
    alive = tms.represented_features(train_target(c, target_dir))
    if alive.all():
      print(f"[demo] TMS 5-2 target, seed {seed}: represents all 5 features ({target_dir})")
      break
    dead = [int(i) for i in (~alive).nonzero()[0]]
    print(f"[demo] TMS 5-2 target, seed {seed}: features {dead} are dead, so it is not "
          f"decomposed; training seed {seed + 1} instead")
  else:
    raise SystemExit("[demo] no seed in 0..9 gave a target with all 5 features alive")

  d = apd_tms.get_config("5-2")
  d.target_dir = target_dir
  d.optim.steps = _STEPS.value
  s = decompose(d, os.path.join(root, "apd_tms_5-2"))
  print(f"\n[demo] APD on TMS 5-2 ({_STEPS.value} steps, {time.time() - t0:.0f}s in all)")
  print(f"  {'':6s} {'ours':>7s} {'paper':>7s}")
  for k in ("mmcs", "ml2r"):
    print(f"  {k.upper():6s} {s[k]:7.3f} {PAPER[k]:7.3f}")
  print(f"  figure:  {s['figure']}")
  print(f"  summary: {os.path.join(root, 'apd_tms_5-2', 'summary.json')}")


if __name__ == "__main__":
  app.run(main)
