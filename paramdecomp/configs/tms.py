"""Toy models of superposition targets (docs/methods/shared.md §0.4).

  python scripts/train_toy.py --config=paramdecomp/configs/tms.py:5-2 --workdir=runs/tms_5-2
Variants: 5-2, 40-10, 5-2-id, 40-10-id (the +ID variants add a frozen identity hidden layer), and
any other size N-H (e.g. 9-3) with the 5-2 recipe (batch 1024, 5000 steps).

Every variant initialises the decoder bias at zero. The APD paper's 5-2 recipe keeps torch's
default U(-1/sqrt(h), 1/sqrt(h)) bias, which leaves a feature dead on 4 of 10 seeds (0, 5, 6, 9):
the 7 dead features all started with bias b_i < -||W_i||^2, so their ReLU is off even when they
alone are active at x_i = 1 and their own reconstruction gives their column no gradient (one
such feature of 8 survived, switched on by co-active ones); with a zero bias all ten seeds
represent all five features
(results/apd_tms.md). --config.model.bias_zero_init=False gives the paper's init.
"""
from paramdecomp.toy_models import tms
from paramdecomp.runs.targets import default_config

_VARIANTS = {  # n_features, n_hidden, batch, steps (APD paper recipe)
    "5-2": (5, 2, 1024, 5000),
    "40-10": (40, 10, 2048, 2000),
}


def _size(base: str):
  """(n_features, n_hidden, batch, steps) of a variant name's base ('5-2', or any 'N-H')."""
  if base in _VARIANTS:
    return _VARIANTS[base]
  n, _, h = base.partition("-")
  if not (n.isdigit() and h.isdigit() and 0 < int(h) < int(n)):
    raise ValueError(f"unknown TMS variant {base!r}; use {list(_VARIANTS)} or N-H with "
                     "0 < H < N (the 5-2 recipe), each optionally with -id")
  return int(n), int(h), *_VARIANTS["5-2"][2:]


def get_config(variant: str = "5-2"):
  ident = variant.endswith("-id")
  n, h, bs, steps = _size(variant.removesuffix("-id"))
  c = default_config()
  c.model = tms.model_config(n, h, n_hidden_layers=int(ident), bias_zero_init=True)
  c.data.batch_size = bs
  c.optim.steps = steps
  return c
