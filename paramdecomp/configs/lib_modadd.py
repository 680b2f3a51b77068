"""LIB vs PCA on the modular-addition transformer (docs/methods/lib.md §5.5 build settings).

  python scripts/train_toy.py --config=paramdecomp/configs/modadd.py --workdir=runs/modadd
  python scripts/build_basis.py --config=paramdecomp/configs/lib_modadd.py \
      --config.target_dir=runs/modadd --workdir=runs/lib_modadd

The reference code's build settings (`build_lib.reference_config`); bases and edges on the train
split, ablations on the test split.
"""
from paramdecomp.runs.build_lib import reference_config


def get_config():
  return reference_config()
