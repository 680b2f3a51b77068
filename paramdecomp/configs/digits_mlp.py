"""MLP on sklearn's 8x8 digits, 64 -> 100 -> 100 -> 10 (the MNIST recipe, docs/methods/lib.md §5.5).

  python scripts/train_toy.py --config=paramdecomp/configs/digits_mlp.py --workdir=runs/digits

Adam lr 1e-3 (no weight decay), batch 64, 3000 steps (~134 epochs of the 1438 training digits).
"""
from paramdecomp.toy_models import digits_mlp
from paramdecomp.runs.targets import default_config


def get_config():
  c = default_config()
  c.model = digits_mlp.model_config()
  c.data = digits_mlp.data_config()
  c.optim.update(dict(lr=1e-3, weight_decay=0.0, steps=3000, schedule="constant",
                      warmup_pct=0.0))
  c.run.update(dict(log_every=500, steps_per_dispatch=500, checkpoint_every=0))
  return c
