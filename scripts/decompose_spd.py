"""SPD on a trained toy target; writes checkpoints, metrics.jsonl, summary.json and figures.

  python scripts/decompose_spd.py --config=paramdecomp/configs/spd_tms.py:5-2 \
      --config.target_dir=runs/tms_5-2 --workdir=runs/spd_tms_5-2 [--resume]

Multi-host: run the same command on every host with --coordinator_address=host0:port
--num_processes=N --process_id=i (see BUILD.md).
"""
from paramdecomp.core import cli
from paramdecomp.runs.decompose_spd import decompose

main = cli.run_main(decompose, "SPD decomposition")

if __name__ == "__main__":
  cli.run(main)
