"""APD on classifiers (docs/notes/apd_classifiers.md): KL minimality on the logits, gradient
attributions on the log-probabilities, faithfulness weighted 100x. Variants: digits (the digits
MLP 64 -> 100 -> 100 -> 10, every Dense kernel) and modadd (the mod-add transformer's token
embedding and attention kernels, through their matrix views).

  python scripts/train_toy.py --config=paramdecomp/configs/digits_mlp.py --workdir=runs/digits
  python scripts/decompose.py --config=paramdecomp/configs/apd_digits.py \
      --config.target_dir=runs/digits --workdir=runs/apd_digits
  python scripts/decompose.py --config=paramdecomp/configs/apd_digits.py:modadd \
      --config.target_dir=runs/modadd --workdir=runs/apd_modadd

Batches are drawn from the target's training inputs (the runner's classifier plan). The values are
the starting point measured in docs/notes/apd_classifiers.md; the MSE defaults of the toys left
the components far from the kernels and the top-k model near chance there.
"""
from paramdecomp.runs.decompose_apd import default_config


# the weights of each variant: every Dense kernel of the digits MLP; the mod-add transformer's
# token embedding and attention kernels (through their matrix views)
_DECOMPOSE = {"digits": (r"params/Dense_\d+/kernel",),
              "modadd": (r"params/tok/embedding", r"params/W_[QKVO]/kernel")}


def get_config(variant: str = "digits"):
  if variant not in _DECOMPOSE:
    raise ValueError(f"unknown variant {variant!r}; use {' or '.join(_DECOMPOSE)}")
  c = default_config()
  c.apd.update(dict(
      decompose=_DECOMPOSE[variant], C=20, m=0, init="xavier_normal", init_scale=1.0,
      sparsity="batch_topk", topk=2.0, minimality_divergence="kl", attribution_output="log_probs",
      faithfulness_norm="entries", faithfulness_coeff=100.0, minimality_coeff=1.0,
      simplicity_coeff=0.1, schatten_p=0.9))
  c.batch_size = 256
  c.optim.update(dict(lr=1e-3, schedule="cosine", warmup_pct=0.01, steps=3000))
  c.run.update(dict(log_every=500, steps_per_dispatch=100, checkpoint_every=0))
  return c
