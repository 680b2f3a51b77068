"""CNN on sklearn's 8x8 digits: conv 3x3 (16) -> conv 3x3 stride 2 (32) -> dense 10
(paramdecomp/models/cnn.py), the digits MLP's split.

  python scripts/train_toy.py --config=paramdecomp/configs/cnn_digits.py --workdir=runs/cnn_digits

Adam lr 1e-3, weight decay 1e-4, batch 64, 2000 steps (~90 epochs of the 1438 training digits).
"""
from paramdecomp.models import cnn
from paramdecomp.runs.targets import default_config


def get_config():
  c = default_config()
  c.model = cnn.model_config()
  c.data = cnn.data_config()
  c.optim.update(dict(lr=1e-3, weight_decay=1e-4, steps=2000, schedule="constant",
                      warmup_pct=0.0))
  c.run.update(dict(log_every=500, steps_per_dispatch=500, checkpoint_every=0))
  return c
