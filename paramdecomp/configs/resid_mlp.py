"""Residual MLP targets (docs/methods/shared.md §0.4): compressed computation, cross-layer features.

  python scripts/train_toy.py --config=paramdecomp/configs/resid_mlp.py:1-layer \
      --workdir=runs/resid_mlp_1
Variants: 1-layer (100 features, 50 neurons), 2-layer (25 neurons per layer), 3-layer (102
features, 17 neurons per layer). AdamW (wd 0.01), lr 3e-3 with cosine decay, batch 2048, 10k steps
(the APD code's 1-layer recipe), p = 0.01, values U[-1, 1].
"""
from paramdecomp.toy_models import resid_mlp
from paramdecomp.runs.targets import default_config

_VARIANTS = {"1-layer": (100, 1, 50), "2-layer": (100, 2, 25), "3-layer": (102, 3, 17)}


def get_config(variant: str = "1-layer"):
  if variant not in _VARIANTS:
    raise ValueError(f"unknown ResidMLP variant {variant!r}; use one of {list(_VARIANTS)}")
  n, layers, d_mlp = _VARIANTS[variant]
  c = default_config()
  c.model = resid_mlp.model_config(n_features=n, d_resid=1000, n_layers=layers, d_mlp=d_mlp)
  c.data.update(dict(p=0.01, lo=-1.0, hi=1.0, batch_size=2048))
  c.optim.update(dict(lr=3e-3, weight_decay=0.01, steps=10_000, schedule="cosine",
                      warmup_pct=0.0))
  return c
