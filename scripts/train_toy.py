"""Train a toy target model and save it with orbax; writes target_report.json.

  python scripts/train_toy.py --config=paramdecomp/configs/tms.py:5-2 --workdir=runs/tms_5-2
  python scripts/train_toy.py --config=paramdecomp/configs/resid_mlp.py:1-layer --workdir=runs/rmlp1
  python scripts/train_toy.py --config=paramdecomp/configs/modadd.py --workdir=runs/modadd

The report is the target's own (`paramdecomp.toy_models.registry`): TMS, the features it represents; ResidMLP,
MSE vs the monosemantic baseline and each output's response to its own feature at x = 1; the x^2
MLP (L3D's TM4), each feature's error of x_j -> x_j^2; classifiers (modadd, digits_mlp), train
and test loss and accuracy. A target that is a poor subject for decomposition prints a warning.
"""
import json
import os

from absl import logging

from paramdecomp.core.checkpoint import save_json
from paramdecomp.core import cli
from paramdecomp.runs.targets import report, train_target

_CONFIG, _WORKDIR, _RESUME = cli.define_run_flags("Target")


def main(argv):
  del argv
  cli.setup_logging()
  c = _CONFIG.value
  with cli.library_errors():
    params = train_target(c, _WORKDIR.value, resume=_RESUME.value)
  rep, warnings = report(c, params)
  save_json(os.path.join(_WORKDIR.value, "target_report.json"), rep)
  if "represented_features" in rep:
    logging.info("target represents %d of %d features", rep["represented_features"],
                 rep["n_features"])
  print(json.dumps(rep, indent=2), flush=True)
  for w in warnings:
    print(f"WARNING: {w}", flush=True)


if __name__ == "__main__":
  cli.run(main)
