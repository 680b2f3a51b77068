"""L3D decomposition of a trained toy target; writes checkpoints, metrics.jsonl, summary.json,
subnetworks.png (subnetwork blocks next to the target's tensors) and perturbation_sweeps.png.

  python scripts/train_toy.py --config=paramdecomp/configs/l3d_toys.py:tm1 --workdir=runs/l3d_tm1
  python scripts/decompose_l3d.py --config=paramdecomp/configs/l3d_decompose.py:tm1 \
      --config.target_dir=runs/l3d_tm1 --workdir=runs/l3d_tm1_dec [--resume]

Multi-host: run the same command on every host with --coordinator_address=host0:port
--num_processes=N --process_id=i and a --config.run.mesh.* over all hosts' devices (see BUILD.md).
"""
from paramdecomp.core import cli
from paramdecomp.runs.decompose_l3d import decompose

main = cli.run_main(decompose, "L3D decomposition")

if __name__ == "__main__":
  cli.run(main)
