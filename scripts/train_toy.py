"""Train a toy target model and save it with orbax.

  python scripts/train_toy.py --config=paramdecomp/configs/tms.py:5-2 --workdir=runs/tms_5-2
  python scripts/train_toy.py --config=paramdecomp/configs/resid_mlp.py:1-layer --workdir=runs/rmlp1

TMS: reports how many features the target represents. ResidMLP: writes target_report.json (MSE
vs the monosemantic baseline, response of each output to its own feature at x = 1). The x^2 MLP
(L3D's TM4): writes target_report.json (per-feature error of x_j -> x_j^2).
Classifiers (modadd, digits_mlp): writes target_report.json with train and test loss and accuracy.

  python scripts/train_toy.py --config=paramdecomp/configs/modadd.py --workdir=runs/modadd
  python scripts/train_toy.py --config=paramdecomp/configs/digits_mlp.py --workdir=runs/digits
"""
import json
import os

from absl import app, logging
import jax

from paramdecomp.core.checkpoint import save_json
from paramdecomp.core.cli import define_run_flags, setup_logging
from toy_models import resid_mlp, squares, tms
from paramdecomp.runs.targets import (evaluate_classifier, is_classifier, model_apply, model_module,
                                 train_target)

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
  elif is_classifier(model_module(c.model.kind)):
    mod = model_module(c.model.kind)
    ds = mod.dataset(c)
    rep = {split: evaluate_classifier(mod, params, ds[f"{split}_x"], ds[f"{split}_y"])
           for split in ("train", "test")}
    save_json(os.path.join(_WORKDIR.value, "target_report.json"), rep)
    print(json.dumps(rep, indent=2), flush=True)
  elif c.model.kind == "resid_mlp":
    rep = resid_mlp.report(params, c.data.p, jax.random.PRNGKey(c.seed + 2))
    save_json(os.path.join(_WORKDIR.value, "target_report.json"), rep)
    print(json.dumps(rep, indent=2), flush=True)
  elif c.model.kind == "squares":
    rep = squares.report(model_apply(c.model), params)
    save_json(os.path.join(_WORKDIR.value, "target_report.json"), rep)
    print(json.dumps(rep), flush=True)
    if rep["features_learned"] < c.model.n_features:
      print("WARNING: some features are not computed (RMS error >= 0.1): a poor subject for "
            "decomposition; try another --config.seed", flush=True)


if __name__ == "__main__":
  app.run(main)
