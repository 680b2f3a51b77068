"""Decompose a trained toy target; writes checkpoints, metrics.jsonl, summary.json and figures.

  python scripts/decompose.py --config=paramdecomp/configs/apd_tms.py:5-2 \
      --config.target_dir=runs/tms_5-2 --workdir=runs/apd_tms_5-2 [--resume]

Multi-host: run the same command on every host with --coordinator_address=host0:port
--num_processes=N --process_id=i (see BUILD.md).
"""
import json

from absl import app

from paramdecomp.core.cli import (define_distributed_flags, define_run_flags, init_distributed,
                             setup_logging)
from paramdecomp.runs.decompose_apd import decompose

_CONFIG, _WORKDIR, _RESUME = define_run_flags("Decomposition")
define_distributed_flags()


def main(argv):
  del argv
  setup_logging()
  init_distributed()
  summary = decompose(_CONFIG.value, _WORKDIR.value, resume=_RESUME.value)
  print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
  app.run(main)
