"""SPD on residual MLPs, with the paper's hyperparameters (METHODS.md §2.7).

  python scripts/decompose_spd.py --config=paramdecomp/configs/spd_resid_mlp.py:1-layer \
      --config.target_dir=runs/resid_mlp_1 --workdir=runs/spd_rmlp1
Variants: 1-layer (C 100, 30k steps, lr 2e-3), 2-layer (C 400, 50k, lr 1e-3, minimality 1e-5;
the code: 2e-5), 3-layer (C 500, d_gate 128, 200k in the paper, lr 1e-3, minimality 5e-6); all
W_in and W_out, p = 2, batch 2048, constant lr without warmup.
"""
from paramdecomp.runs.decompose_spd import default_config

_VARIANTS = {  # C, d_gate, steps, lr, minimality coefficient
    "1-layer": (100, 16, 30_000, 2e-3, 1e-5),
    "2-layer": (400, 16, 50_000, 1e-3, 1e-5),
    "3-layer": (500, 128, 200_000, 1e-3, 5e-6),
}


def get_config(variant: str = "1-layer"):
  if variant not in _VARIANTS:
    raise ValueError(f"unknown ResidMLP variant {variant!r}; use one of {list(_VARIANTS)}")
  C, d_gate, steps, lr, coeff = _VARIANTS[variant]
  c = default_config()
  c.spd.update(dict(decompose=("layers/.*/W_in", "layers/.*/W_out"), C=C, d_gate=d_gate,
                    importance_minimality_coeff=coeff, pnorm=2.0, faithfulness_coeff=1.0,
                    stochastic_recon_coeff=1.0, stochastic_recon_layerwise_coeff=1.0))
  c.batch_size = 2048
  c.optim.update(dict(lr=lr, schedule="constant", warmup_pct=0.0, steps=steps))
  c.analysis.one_hot = 1.0
  return c
