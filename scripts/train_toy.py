"""Train a toy target model and save it with orbax.

  python scripts/train_toy.py --config=scripts/configs/tms.py:5-2 --workdir=runs/tms_5-2
"""
from absl import app, logging

from paramdecomp.cli import define_run_flags, setup_logging
from toy_models import tms
from toy_models.training import train_target

_CONFIG, _WORKDIR, _RESUME = define_run_flags("Target")


def main(argv):
  del argv
  setup_logging()
  c = _CONFIG.value
  params = train_target(c, _WORKDIR.value, resume=_RESUME.value)
  if c.model.kind == "tms":
    alive = tms.represented_features(params)
    n_alive, n = int(alive.sum()), alive.shape[0]
    logging.info("target represents %d of %d features", n_alive, n)
    print(f"target represents {n_alive} of {n} features", flush=True)
    if n_alive < n:
      dead = [int(i) for i in (~alive).nonzero()[0]]
      print(f"WARNING: features {dead} are dead (embedding norm < 0.5): this target is a "
            "poor subject for decomposition; try another --config.seed", flush=True)


if __name__ == "__main__":
  app.run(main)
