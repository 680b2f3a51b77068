"""L3D's toys with the authors' reference outputs, several decomposition seeds each, one table.

  python scripts/reproduce_l3d_toys.py --workdir=runs/repro_l3d            # tm1..tm4, seeds 0-2
  python scripts/reproduce_l3d_toys.py --toys=tm1 --suffix=-batch --workdir=runs/repro_l3d_batch
Writes <workdir>/reproduction.json (every summary and the bars of paramdecomp/runs/l3d_toys.py)
and prints one row per run. --suffix=-batch takes another sample's output (the paper's text).
"""
import json
import os

from absl import app, flags

from paramdecomp.configs import l3d_decompose, l3d_toys as toy_configs
from paramdecomp.core.cli import setup_logging
from paramdecomp.runs import decompose_l3d, l3d_toys, targets

# the target seed of each toy (config `l3d_toys.py:<toy>` with --config.seed)
TARGET_SEEDS = {"tm1": 0, "tm2": 0, "tm3": 0, "tm4": 1, "tm3-code": 0, "tm4-code": 0}

_TOYS = flags.DEFINE_list("toys", list(l3d_toys.TOYS), "Toys (tm1..tm4, tm3-code, tm4-code).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Decomposition seeds.")
_SUFFIX = flags.DEFINE_enum("suffix", "", ["", "-batch"], "Decomposition config variant suffix.")
_TARGET_SEED = flags.DEFINE_integer("target_seed", None, "Target seed (default: TARGET_SEEDS).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Root run directory.", required=True)


def reproduce(toy: str, root: str, seeds, variant_suffix: str = "",
              target_seed: int | None = None) -> list[dict]:
  """Train `toy`'s target in root/target (once) and decompose it with each seed under
  root/<variant>_seed<s>; one row per seed: the summary's figures and `check`'s bars."""
  tdir = os.path.join(root, "target")
  if not os.path.exists(os.path.join(tdir, "target.json")):
    c = toy_configs.get_config(toy)
    c.seed = TARGET_SEEDS[toy] if target_seed is None else target_seed
    targets.train_target(c, tdir)
  variant, rows = toy + variant_suffix, []
  for seed in seeds:
    d = l3d_decompose.get_config(variant)
    d.seed, d.target_dir = seed, tdir
    s = decompose_l3d.decompose(d, os.path.join(root, f"{variant}_seed{seed}"))
    rows.append({"toy": toy, "variant": variant, "seed": seed, "reference": d.l3d.reference,
                 "summary": s, "bars": l3d_toys.check(toy, s)})
  return rows


def main(argv):
  del argv
  setup_logging()
  rows = []
  for toy in _TOYS.value:
    rows += reproduce(toy, os.path.join(_WORKDIR.value, toy),
                      [int(s) for s in _SEEDS.value], _SUFFIX.value, _TARGET_SEED.value)
    with open(os.path.join(_WORKDIR.value, "reproduction.json"), "w") as f:
      json.dump(rows, f, indent=2)
  print(f"\n{'variant':>10} {'seed':>4} {'reference':>9} {'recon':>7} {'bound':>7}  bars")
  for r in rows:
    s = r["summary"]
    print(f"{r['variant']:>10} {r['seed']:4d} {r['reference']:>9} {s['recon_heldout']:7.3f} "
          f"{s.get('recon_bound_heldout', float('nan')):7.3f}  "
          + " ".join(f"{k}={'yes' if v else 'no'}" for k, v in r["bars"].items()))


if __name__ == "__main__":
  app.run(main)
