"""Modular-addition transformer target (p = 113; docs/methods/lib.md §5.5).

  python scripts/train_toy.py --config=paramdecomp/configs/modadd.py --workdir=runs/modadd

AdamW lr 1e-3, weight decay 1.0, betas (0.9, 0.98), 10-step linear warmup, on 30% of all pairs;
the reference trains full batch for 60k epochs, here minibatches of 383 (a tenth of the training
set) for `optim.steps` steps.
"""
from paramdecomp.toy_models import modadd
from paramdecomp.runs.targets import default_config


def get_config():
  c = default_config()
  c.model = modadd.model_config()
  c.data = modadd.data_config()
  c.optim.update(dict(lr=1e-3, weight_decay=1.0, b1=0.9, b2=0.98, steps=20_000,
                      schedule="constant", warmup_pct=10 / 20_000))
  c.run.update(dict(log_every=1000, steps_per_dispatch=500, checkpoint_every=5000))
  return c
