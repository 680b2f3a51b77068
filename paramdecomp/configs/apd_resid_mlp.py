"""APD on the residual-MLP targets (docs/methods/apd.md §1.8), the reference code's settings.

  python scripts/train_toy.py --config=paramdecomp/configs/resid_mlp.py:1-layer \
      --workdir=runs/resid_mlp_1
  python scripts/decompose.py --config=paramdecomp/configs/apd_resid_mlp.py:1-layer \
      --config.target_dir=runs/resid_mlp_1 --workdir=runs/apd_resid_mlp_1
Variants: 1-layer (C=130, unit-norm), 2-layer (C=200), and `-rank1` versions of both (m = 1, the
constraint the paper's text says largely fixes components that carry two features; 50x cheaper).
Every MLP weight is decomposed; the hidden-activation loss matches ReLU(W_in r) (act_recon 1).
Batch 256 with batch top-k 1.28 (the paper's analysis setting), lr 1e-3 cosine with 1% warmup,
10k steps, Kaiming-uniform factors scaled by init_scale: the reference's 2 for the full-rank
1-layer variant only. The others depart from the reference there, because at its scale they do
not train (docs/notes/apd_resid_mlp_init_scale.md): the rank-1 variants start 20x smaller (0.1;
Kaiming's fan-in is d * m, so at m = 1 the reference scale gives each component a norm several
times the target's and 130-200 of them sum to noise that faithfulness must first cancel), and the
full-rank 2-layer one 10x smaller (0.2; at 2 its faithfulness is still 0.26 at step 500, against
2e-5 at 0.2). Pass --config.apd.init_scale=2.0 for the reference's scale.
Results of all of them: results/apd_resid_mlp.md.
"""
from paramdecomp.runs.decompose_apd import default_config

_VARIANTS = {
    # C, coefficients F / min / S, unit norm, full-rank init_scale
    "1-layer": (130, (1.0, 1.0, 10.0), True, 2.0),
    "2-layer": (200, (1.0, 2.0, 7.0), False, 0.2),
}


def get_config(variant: str = "1-layer"):
  base, _, rank = variant.partition("-rank")
  if base not in _VARIANTS or rank not in ("", "1"):
    raise ValueError(f"unknown variant {variant!r}; use 1-layer, 2-layer, 1-layer-rank1 or "
                     "2-layer-rank1")
  C, (f, mn, s), unit_norm, scale = _VARIANTS[base]
  c = default_config()
  c.apd.update(dict(
      decompose=(r"layers/\d+/W_(in|out)",), C=C, m=int(rank or 0), init="kaiming_uniform",
      init_scale=0.1 if rank else scale, topk=1.28, faithfulness_coeff=f, minimality_coeff=mn,
      simplicity_coeff=s, schatten_p=0.9, act_recon_coeff=1.0,
      act_recon_layers=(r"layers/\d+/W_in",), act_recon_relu=True, unit_norm_matrices=unit_norm))
  c.batch_size = 256
  c.optim.update(dict(lr=1e-3, schedule="cosine", warmup_pct=0.01, steps=10_000))
  c.run.update(dict(log_every=500, steps_per_dispatch=50, checkpoint_every=2500))
  return c
