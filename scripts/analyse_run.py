"""Re-run a decomposition's analyses on one of its checkpoints (e.g. while it still trains).

  python scripts/analyse_run.py --workdir=runs/apd_rmlp1 [--step=2500]

Writes <workdir>/analysis_<step>/summary.json and the run's figures there.
"""
import json

from absl import app, flags

from paramdecomp.core.cli import setup_logging
from paramdecomp.runs.analyse import analyse_checkpoint

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of scripts/decompose.py or decompose_l3d.py.",
                               required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")


def main(argv):
  del argv
  setup_logging()
  print(json.dumps(analyse_checkpoint(_WORKDIR.value, _STEP.value), indent=2), flush=True)


if __name__ == "__main__":
  app.run(main)
