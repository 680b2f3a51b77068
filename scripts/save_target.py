"""Save your own trained model as a target that decompose.py, decompose_l3d.py and analyse_run.py
take (`--config.target_dir`).

  python scripts/save_target.py --params=my_weights.npz --apply=mypkg.model:apply \
      --batch=mypkg.data:batch --workdir=runs/my_target

--params: an .npz whose keys are the '/'-joined paths of the params tree (e.g.
'params/Dense_0/kernel'). --apply: 'module:function' for ``apply(params, x)``; --batch:
'module:function' for ``batch(key, n) -> x [n, ...]``, a pure JAX function of the key (the inputs
the methods decompose on). Both modules must be importable (on PYTHONPATH) wherever the target is
used.
"""
from absl import app, flags
import numpy as np

from paramdecomp.core import cli
from paramdecomp.runs.targets import save_external_target

_PARAMS = flags.DEFINE_string("params", None, ".npz of the params (keys: '/'-joined paths).",
                              required=True)
_APPLY = flags.DEFINE_string("apply", None, "module:function of apply(params, x).", required=True)
_BATCH = flags.DEFINE_string("batch", None, "module:function of batch(key, n).", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Target directory.", required=True)


def nested(flat: dict) -> dict:
  """{'a/b': v} -> {'a': {'b': v}}."""
  out = {}
  for path, v in flat.items():
    node = out
    *head, last = path.split("/")
    for k in head:
      node = node.setdefault(k, {})
    node[last] = v
  return out


def main(argv):
  del argv
  with cli.library_errors(), np.load(_PARAMS.value) as f:
    params = nested({k: f[k] for k in f.files})
    save_external_target(_WORKDIR.value, params, _APPLY.value, _BATCH.value)
  print(f"saved the target in {_WORKDIR.value}", flush=True)


if __name__ == "__main__":
  app.run(main)
