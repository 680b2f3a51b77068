"""Sharded runs on 8 simulated CPU devices agree with the single-device run.

Each case runs in a subprocess: the device count is fixed when jax first starts.
"""
import json
import os
import subprocess
import sys
import shutil
import textwrap

import jax
import numpy as np
from paramdecomp.checkpoint import load_on_one_device

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import jax, numpy as np
    from absl import logging
    logging.set_verbosity("error")
    from paramdecomp import lowrank
    from paramdecomp.checkpoint import Checkpointer
    from toy_models import decomposition, training
    root, data, comps, steps, resume_from = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    tdir = os.path.join(os.path.dirname(root), "target")
    if not os.path.exists(os.path.join(tdir, "target.json")):
      t = training.default_config(); t.seed = 1; t.optim.steps = 500; t.run.log_every = 0
      training.train_target(t, tdir)
    c = decomposition.default_config()
    c.target_dir, c.batch_size, c.optim.steps = tdir, 256, steps
    c.apd.C, c.apd.topk = 8, 0.5
    c.run.update(dict(log_every=0, steps_per_dispatch=20, checkpoint_every=20))
    c.run.mesh.update(dict(data=data, components=comps))
    if resume_from:  # continue a run made on another mesh
      import shutil; shutil.copytree(resume_from, root)
    s = decomposition.decompose(c, root, resume=bool(resume_from))
    print("RESULT", json.dumps({"loss": s["loss"], "mmcs": s["mmcs"], "n_devices": len(jax.devices())}))
""")


def _run(tmp, name, data, comps, steps, resume_from=""):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp / name), str(data), str(comps),
                      str(steps), resume_from], capture_output=True, text=True, env=env, cwd=ROOT)
  assert r.returncode == 0 or "RESULT" in r.stdout, r.stderr[-3000:]
  return r


def _final(tmp, name, step):
  return load_on_one_device(str(tmp / name / "checkpoints" / str(step) / "default"))


def test_sharded_run_matches_single_device_and_restores_across_meshes(tmp_path):
  _run(tmp_path, "single", 1, 1, 60)
  _run(tmp_path, "mesh2x4", 2, 4, 60)
  a, b = _final(tmp_path, "single", 60), _final(tmp_path, "mesh2x4", 60)
  la, lb = [np.asarray(x) for x in jax.tree.leaves(a)], [np.asarray(x) for x in jax.tree.leaves(b)]
  assert len(la) == len(lb) > 4
  for x, y in zip(la, lb):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-6)
  # a 2x4 checkpoint taken at step 40 continues on a 4x2 mesh to the same end
  part = tmp_path / "part"
  shutil.copytree(tmp_path / "mesh2x4", part)
  shutil.rmtree(part / "checkpoints" / "60")
  _run(tmp_path, "moved", 4, 2, 60, resume_from=str(part))
  for x, y in zip(la, [np.asarray(v) for v in jax.tree.leaves(_final(tmp_path, "moved", 60))]):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-6)


def test_components_not_divisible_over_the_mesh_fail_by_name(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  r = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "decompose.py"),
       f"--config={os.path.join(ROOT, 'scripts', 'configs', 'apd_tms.py')}:5-2",
       f"--workdir={tmp_path / 'x'}", "--config.target_dir=unused",
       "--config.run.mesh.components=2"], capture_output=True, text=True, env=env, cwd=ROOT)
  assert r.returncode != 0
  assert "invalid config field 'run.mesh.components': C=5 components do not divide" in r.stderr
