"""Restarts chosen by the loss: finished runs of one config that differ only in --config.seed,
each run's final loss on the same fixed batches and keys, and the lowest named
(`paramdecomp.runs.restarts`; no ground truth used).

  for r in 0 1 2; do python scripts/decompose_spd.py --config=paramdecomp/configs/spd_tms.py:5-2 \\
      --config.target_dir=runs/tms_5-2 --config.seed=$((1 + 1000 * r)) --workdir=runs/spd_r$r; done
  python scripts/pick_restart.py --workdirs=runs/spd_r0,runs/spd_r1,runs/spd_r2

Prints each run's loss terms and, from its summary.json where it has one, MMCS and ML2R.
"""
import json
import os

from absl import app, flags

from paramdecomp.core.cli import setup_logging
from paramdecomp.runs import restarts

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run directories (restarts of one config).",
                              required=True)
_BATCHES = flags.DEFINE_integer("batches", 20, "Fixed batches the final losses are averaged over.")
_OUT = flags.DEFINE_string("out", None, "Write the rows and the pick as JSON here.")


def main(argv):
  del argv
  setup_logging()
  best, rows = restarts.pick(_WORKDIRS.value, _BATCHES.value)
  for i, r in enumerate(rows):
    path = os.path.join(r["workdir"], "summary.json")
    if os.path.exists(path):
      with open(path) as f:
        s = json.load(f)
      r.update({k: s[k] for k in ("mmcs", "ml2r") if k in s})
    terms = " ".join(f"{k} {v:.6g}" for k, v in r.items() if k not in ("workdir", "seed", "step"))
    mark = "*" if i == best else " "
    print(f"{mark} {r['workdir']} (seed {r['seed']}, step {r['step']}): {terms}")
  print(f"lowest loss: {rows[best]['workdir']}")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"pick": best, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
