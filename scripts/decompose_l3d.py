"""L3D decomposition of a trained toy target; writes checkpoints, metrics.jsonl, summary.json,
subnetworks.png (subnetwork blocks next to the target's tensors) and perturbation_sweeps.png.

  python scripts/train_toy.py --config=paramdecomp/configs/l3d_toys.py:tm1 --workdir=runs/l3d_tm1
  python scripts/decompose_l3d.py --config=paramdecomp/configs/l3d_decompose.py:tm1 \
      --config.target_dir=runs/l3d_tm1 --workdir=runs/l3d_tm1_dec [--resume]

Multi-host: run the same command on every host with --coordinator_address=host0:port
--num_processes=N --process_id=i and a --config.run.mesh.* over all hosts' devices (see BUILD.md).
"""
import json

from absl import app

from paramdecomp.core.cli import (define_distributed_flags, define_run_flags, init_distributed,
                             setup_logging)
from paramdecomp.runs.decompose_l3d import decompose

_CONFIG, _WORKDIR, _RESUME = define_run_flags("L3D decomposition")
define_distributed_flags()


def main(argv):
  del argv
  setup_logging()
  init_distributed()
  summary = decompose(_CONFIG.value, _WORKDIR.value, resume=_RESUME.value)
  print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
  app.run(main)
