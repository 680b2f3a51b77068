"""LIB vs PCA on the digits MLP (docs/methods/lib.md §5.5's MNIST MLP recipe on sklearn's digits).

  python scripts/train_toy.py --config=paramdecomp/configs/digits_mlp.py --workdir=runs/digits
  python scripts/build_basis.py --config=paramdecomp/configs/lib_digits.py \
      --config.target_dir=runs/digits --workdir=runs/lib_digits

Jacobian formula, centred, absolute truncation at 1e-15 (the reference's rule) (float64 here: the set is small); squared edges.
"""
from paramdecomp.runs.build_lib import default_config


def get_config():
  c = default_config()
  # the reference code's absolute truncation, for its figures
  c.lib.update(dict(formula="jacobian", center=True, truncation="absolute",
                    truncation_threshold=1e-15,
                    integration="gradient", dtype="float64", edge_formula="squared"))
  return c
