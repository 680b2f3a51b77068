"""paramdecomp: parameter-space interpretability in JAX.

Layers (each imports only those before it): `paramdecomp.core` (pytrees and sites, low-rank
factors, the factored interpreter, gradients, sparsity, scans, the loop, checkpoints, sharding,
config), `paramdecomp.methods` (APD, SPD, L3D, LIB), `paramdecomp.models` and `toy_models` (targets),
`paramdecomp.runs` (a method, a target and a config joined into a run directory).
"""
__version__ = "0.1.0"

from paramdecomp.methods import ablations, apd, degeneracy, l3d, l3d_measures, lib, spd

__all__ = ["ablations", "apd", "degeneracy", "l3d", "l3d_measures", "lib", "load_run", "spd"]


def load_run(workdir: str, step: int | None = None):
  """Reopen a run directory: `paramdecomp.runs.analyse.load_run` (imported on first use, so
  `import paramdecomp` does not load the runs layer, its figures and the toys)."""
  from paramdecomp.runs.analyse import load_run as load
  return load(workdir, step)
