"""LIB vs PCA on the digits MLP (docs/methods/lib.md §5.5's MNIST MLP recipe on sklearn's digits).

  python scripts/train_toy.py --config=paramdecomp/configs/digits_mlp.py --workdir=runs/digits
  python scripts/build_basis.py --config=paramdecomp/configs/lib_digits.py \
      --config.target_dir=runs/digits --workdir=runs/lib_digits

The reference code's build settings (`build_lib.reference_config`; float64 here: the set is
small).
"""
from paramdecomp.runs.build_lib import reference_config


def get_config():
  return reference_config()
