"""Build LIB (and PCA / neuron) bases of a trained classifier, its interaction graphs and ablations.

  python scripts/build_basis.py --config=paramdecomp/configs/lib_modadd.py \
      --config.target_dir=runs/modadd --workdir=runs/lib_modadd
  python scripts/build_basis.py --config=paramdecomp/configs/lib_digits.py \
      --config.target_dir=runs/digits --workdir=runs/lib_digits

Writes (in --workdir): moments/, bases/ and edges/ (orbax pytrees: per node μ and E[f fᵀ]; per
basis, per node C, C⁺, Λ, Gram eigenvalues; per edge set E), node_ablation_<node>.png,
graph_<basis>.png, summary.json (target accuracy, basis sizes, directions needed per node, edges
needed per edge set, Gram / basis / edge wall times, modularity). With --resume, moments, bases and
edges already saved are loaded, not recomputed; without it a workdir that holds them is refused.
"""
import json
import os

from absl import app, logging
import jax

from paramdecomp.core.cli import define_run_flags, setup_logging

_CONFIG, _WORKDIR, _RESUME = define_run_flags("LIB build")


def main(argv):
  del argv
  setup_logging()
  c = _CONFIG.value
  if c.lib.dtype == "float64":
    jax.config.update("jax_enable_x64", True)
  from paramdecomp.runs.build_lib import build   # after x64 is settled
  summary = build(c, _WORKDIR.value, resume=_RESUME.value)
  logging.info("summary written to %s", os.path.join(_WORKDIR.value, "summary.json"))
  print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
  app.run(main)
