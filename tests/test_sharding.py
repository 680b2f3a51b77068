"""Sharded runs on simulated CPU devices, in one process and in two, agree with one device.

Every run is a subprocess of scripts/decompose.py: the device count is fixed when jax starts.
"""
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from paramdecomp.checkpoint import load_on_one_device
from toy_models import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("target"))
  t = training.default_config()
  t.seed, t.optim.steps, t.run.log_every = 1, 500, 0
  training.train_target(t, d)
  return d


def _cmd(target_dir, workdir, data, comps, *extra):
  return [sys.executable, os.path.join(ROOT, "scripts", "decompose.py"),
          f"--config={os.path.join(ROOT, 'scripts', 'configs', 'apd_tms.py')}:5-2",
          f"--workdir={workdir}", f"--config.target_dir={target_dir}",
          "--config.batch_size=256", f"--config.optim.steps={STEPS}", "--config.apd.C=8",
          "--config.apd.topk=0.5", "--config.run.log_every=0",
          "--config.run.steps_per_dispatch=20", "--config.run.checkpoint_every=20",
          f"--config.run.mesh.data={data}", f"--config.run.mesh.components={comps}", *extra]


def _env(devices):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu")


def _run(cmd, devices=8):
  r = subprocess.run(cmd, capture_output=True, text=True, env=_env(devices), cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]


def _final(workdir):
  tree = load_on_one_device(os.path.join(workdir, "checkpoints", str(STEPS), "default"))
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_close(a, b):
  assert len(a) == len(b) > 4
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-6)


@pytest.fixture(scope="module")
def single(target_dir, tmp_path_factory):
  d = str(tmp_path_factory.mktemp("single") / "run")
  _run(_cmd(target_dir, d, 1, 1), devices=1)
  return _final(d)


def test_sharded_run_matches_single_device_and_restores_across_meshes(target_dir, single,
                                                                      tmp_path):
  _run(_cmd(target_dir, tmp_path / "mesh2x4", 2, 4))
  _assert_close(single, _final(tmp_path / "mesh2x4"))
  # a 2x4 checkpoint of step 40 continues on a 4x2 mesh to the same end
  shutil.copytree(tmp_path / "mesh2x4", tmp_path / "moved")
  shutil.rmtree(tmp_path / "moved" / "checkpoints" / str(STEPS))
  _run(_cmd(target_dir, tmp_path / "moved", 4, 2, "--resume"))
  _assert_close(single, _final(tmp_path / "moved"))


def test_two_processes_on_loopback_match_single_device(target_dir, single, tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(
      _cmd(target_dir, tmp_path / "multi", 2, 4, f"--coordinator_address=127.0.0.1:{port}",
           "--num_processes=2", f"--process_id={i}"),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(4), cwd=ROOT)
      for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
  _assert_close(single, _final(tmp_path / "multi"))


def test_components_not_divisible_over_the_mesh_fail_by_name(tmp_path):
  r = subprocess.run(_cmd("unused", tmp_path / "x", 1, 3), capture_output=True, text=True,
                     env=_env(8), cwd=ROOT)
  assert r.returncode != 0
  assert "invalid config field 'run.mesh.components': C=8 components do not divide" in r.stderr


_SPLIT_WORK = """
import jax, jax.numpy as jnp
from paramdecomp import grads, sharding
mesh = sharding.make_mesh(8, 1)
fn = lambda w, x: jnp.sum(jnp.tanh(w @ x) ** 2)
def norms(w, x, chunk, split):
  x = sharding.constrain_batch(mesh, x) if split else x
  return grads.per_sample_grad_sq_norms(fn, w, x, chunk_size=chunk)
w, x = jnp.ones((64, 64)), jnp.ones((64, 64))
for chunk in (None, 16):
  one, split = (jax.jit(norms, static_argnums=(2, 3)).lower(w, x, chunk, s).compile()
                .cost_analysis()["flops"] for s in (False, True))
  print(split / one)
"""


def test_chunked_per_sample_work_stays_split_over_the_data_axis():
  """Per device, per-sample gradient norms of a batch split over 8 'data' devices cost 1/8 of
  one device's (XLA's flop count of the program, a chunk's for the chunked scan), in chunks too:
  every chunk is split over the devices, not run whole on one."""
  r = subprocess.run([sys.executable, "-c", _SPLIT_WORK], capture_output=True, text=True,
                     env=_env(8), cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  np.testing.assert_allclose([float(v) for v in r.stdout.split()], [1 / 8] * 2, rtol=1e-3)

