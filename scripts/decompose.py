"""Decompose a trained toy target; writes checkpoints, metrics.jsonl, summary.json and figures.

  python scripts/decompose.py --config=scripts/configs/apd_tms.py:5-2 \
      --config.target_dir=runs/tms_5-2 --workdir=runs/apd_tms_5-2 [--resume]
"""
import json

from absl import app, flags
from ml_collections import config_flags

from paramdecomp.cli import setup_logging
from toy_models.decomposition import decompose

_CONFIG = config_flags.DEFINE_config_file("config", None, "Decomposition config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_RESUME = flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --workdir.")


def main(argv):
  del argv
  setup_logging()
  summary = decompose(_CONFIG.value, _WORKDIR.value, resume=_RESUME.value)
  print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
  app.run(main)
