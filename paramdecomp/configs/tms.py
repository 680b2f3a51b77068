"""Toy models of superposition targets (docs/methods/shared.md §0.4).

  python scripts/train_toy.py --config=paramdecomp/configs/tms.py:5-2 --workdir=runs/tms_5-2
Variants: 5-2, 40-10, 5-2-id, 40-10-id (the +ID variants add a frozen identity hidden layer).

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


def get_config(variant: str = "5-2"):
  base, _, ident = variant.partition("-id")
  if base not in _VARIANTS or (ident and ident != ""):
    raise ValueError(f"unknown TMS variant {variant!r}; use one of "
                     f"{[v + s for v in _VARIANTS for s in ('', '-id')]}")
  n, h, bs, steps = _VARIANTS[base]
  c = default_config()
  c.model = tms.model_config(n, h, n_hidden_layers=int(variant.endswith("-id")),
                             bias_zero_init=True)
  c.data.batch_size = bs
  c.optim.steps = steps
  return c
