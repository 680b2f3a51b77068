"""LIB vs PCA on the modular-addition transformer (docs/methods/lib.md §5.5 build settings).

  python scripts/train_toy.py --config=paramdecomp/configs/modadd.py --workdir=runs/modadd
  python scripts/build_basis.py --config=paramdecomp/configs/lib_modadd.py \
      --config.target_dir=runs/modadd --workdir=runs/lib_modadd

Jacobian formula, centred, float64, absolute truncation at 1e-15 (the reference's rule), gradient rule; squared edges; bases and
edges on the train split, ablations on the test split.
"""
from paramdecomp.runs.build_lib import default_config


def get_config():
  c = default_config()
  # the reference code's absolute truncation, for its figures
  c.lib.update(dict(formula="jacobian", center=True, truncation="absolute",
                    truncation_threshold=1e-15,
                    integration="gradient", dtype="float64", edge_formula="squared"))
  return c
