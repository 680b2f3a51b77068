"""SPD on toy models of superposition, with the paper's hyperparameters (METHODS.md §2.7).

  python scripts/decompose_spd.py --config=paramdecomp/configs/spd_tms.py:5-2 \
      --config.target_dir=runs/tms_5-2 --workdir=runs/spd_tms_5-2
Variants: 5-2, 40-10, 5-2-id, 40-10-id (the +ID targets' identity layer 'hidden' is decomposed
too). C = 20 (5-2) / 200 (40-10, the code's value), d_gate 16, batch 4096, 40k steps, lr 1e-3
cosine without warmup; importance minimality 3e-3 with p = 1 (5-2) / 1e-4 with p = 2 (40-10).
At 5-2 some starts merge two features into one subcomponent, a local minimum with a higher
loss (about 1 start in 6 with either tie of W, the reference itself 1 of 8; the reference's
per-use tied updates, the default, leave smaller leftovers): to be safe, decompose from three
seeds and keep the lowest final loss with scripts/pick_restart.py, or sweep starts with
scripts/sweep_tms_seeds.py (results/spd_tms.md: every target clean that way so far).
The summary's `figure_count_*` use the paper figures' absolute cuts (spd_summary.figure_counts).
"""
from paramdecomp.runs.decompose_spd import default_config

_VARIANTS = {"5-2": (20, 3e-3, 1.0), "40-10": (200, 1e-4, 2.0)}


def get_config(variant: str = "5-2"):
  base, _, ident = variant.partition("-id")
  if base not in _VARIANTS or ident:
    raise ValueError(f"unknown TMS variant {variant!r}; use one of "
                     f"{[v + s for v in _VARIANTS for s in ('', '-id')]}")
  C, coeff, p = _VARIANTS[base]
  c = default_config()
  c.spd.update(dict(decompose=("W", "hidden") if variant.endswith("-id") else ("W",), C=C,
                    d_gate=16, importance_minimality_coeff=coeff, pnorm=p,
                    faithfulness_coeff=1.0, stochastic_recon_coeff=1.0,
                    stochastic_recon_layerwise_coeff=1.0, n_mask_samples=1))
  c.batch_size = 4096
  c.optim.update(dict(lr=1e-3, schedule="cosine", warmup_pct=0.0, steps=40_000))
  if variant == "5-2-id":   # the cuts spd-paper's tms/plotting.py sets for its 5-2+ID figure
    c.analysis.update(dict(figure_cut=0.03, figure_cut_hidden=0.0115))
  return c
