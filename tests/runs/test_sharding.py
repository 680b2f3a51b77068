"""Sharded runs on simulated CPU devices, in one process and in two, agree with one device.

Every run is a subprocess of scripts/decompose.py (APD) or scripts/decompose_l3d.py: the device
count is fixed when jax starts.
"""
import base64
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from paramdecomp.core.config import ConfigError
from paramdecomp.runs import decompose_l3d as l3d_decomposition
from paramdecomp.runs import targets as training

from _procs import ROOT, env, final, run, start, stop, two_processes, wait

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
          f"--config={os.path.join(ROOT, 'paramdecomp', 'configs', 'apd_tms.py')}:5-2",
          f"--workdir={workdir}", f"--config.target_dir={target_dir}",
          "--config.batch_size=256", f"--config.optim.steps={STEPS}", "--config.apd.C=8",
          "--config.apd.topk=0.5", "--config.run.log_every=0",
          "--config.run.steps_per_dispatch=20", "--config.run.checkpoint_every=20",
          f"--config.run.mesh.data={data}", f"--config.run.mesh.components={comps}", *extra]


def _assert_close(a, b):
  assert len(a) == len(b) > 4
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-6)


@pytest.fixture(scope="module")
def single(target_dir, tmp_path_factory):
  d = str(tmp_path_factory.mktemp("single") / "run")
  run(_cmd(target_dir, d, 1, 1), devices=1)
  return final(d, STEPS)


def test_sharded_run_matches_single_device_and_restores_across_meshes(target_dir, single,
                                                                      tmp_path):
  run(_cmd(target_dir, tmp_path / "mesh2x4", 2, 4), devices=8)
  _assert_close(single, final(tmp_path / "mesh2x4", STEPS))
  # a 2x4 checkpoint of step 40 continues on a 4x2 mesh to the same end
  shutil.copytree(tmp_path / "mesh2x4", tmp_path / "moved")
  shutil.rmtree(tmp_path / "moved" / "checkpoints" / str(STEPS))
  run(_cmd(target_dir, tmp_path / "moved", 4, 2, "--resume"), devices=8)
  _assert_close(single, final(tmp_path / "moved", STEPS))


def test_two_processes_on_loopback_match_single_device(target_dir, single, tmp_path):
  wait(*two_processes(_cmd, target_dir, tmp_path / "multi", 2, 4))
  _assert_close(single, final(tmp_path / "multi", STEPS))


def test_components_not_divisible_over_the_mesh_fail_by_name(tmp_path):
  r = subprocess.run(_cmd("unused", tmp_path / "x", 1, 3), capture_output=True, text=True,
                     env=env(8), cwd=ROOT)
  assert r.returncode != 0
  assert "invalid config field 'run.mesh.components': C=8 components do not divide" in r.stderr


def test_a_device_count_that_xla_dropped_is_named_in_the_mesh_error():
  """XLA reads no XLA_FLAGS word after one without '--': with 'intra_op_parallelism_threads=1'
  before it, 8 simulated devices silently become 1, and the mesh error says why."""
  e = dict(env(8), XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1 "
           "--xla_force_host_platform_device_count=8")
  code = "from paramdecomp.core import sharding; sharding.make_mesh(2, 4)"
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, cwd=ROOT)
  assert "only 1 are visible; XLA_FLAGS has 'intra_op_parallelism_threads=1' before" in r.stderr
  e["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8 intra_op_parallelism_threads=1"
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-2000:]


_SPLIT_WORK = """
import jax, jax.numpy as jnp
from paramdecomp.core import grads, sharding
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
                     env=env(8), cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  np.testing.assert_allclose([float(v) for v in r.stdout.split()], [1 / 8] * 2, rtol=1e-3)


# L3D on the APD target (TMS 5-2) with all-zero rows rejected, as TM1: 4 epochs of 4 steps,
# 8 subnetworks so that they split over the 2x4 mesh's 4 'components' devices; the forward path
# (jvps) with the gradient norms in chunks of 8, i.e. 4 samples per 'data' device and chunk
L3D_STEPS = 16


def _l3d_cmd(target_dir, workdir, data, comps, *extra):
  # another sample's output as reference (tm1-batch): with the batch mean, 16 steps leave a
  # summary cosine that float32 reduction order moves by 4e-4 between layouts
  return [sys.executable, os.path.join(ROOT, "scripts", "decompose_l3d.py"),
          f"--config={os.path.join(ROOT, 'paramdecomp', 'configs', 'l3d_decompose.py')}:tm1-batch",
          f"--workdir={workdir}", f"--config.target_dir={target_dir}",
          "--config.zero_rows=reject", "--config.n_samples=128", "--config.n_eval=64",
          "--config.epochs=4", "--config.l3d.n_subnets=8", "--config.l3d.path=forward",
          "--config.l3d.chunk_size=8", "--config.run.log_every=1",
          "--config.run.checkpoint_every=2",
          f"--config.run.mesh.data={data}", f"--config.run.mesh.components={comps}", *extra]


def _l3d_result(workdir) -> dict:
  """{name: array} of an L3D run: final state leaves, per-epoch logged metrics, summary values."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  del summary["figures"]  # paths
  out = {f"state{i}": x for i, x in enumerate(final(workdir, L3D_STEPS))}
  out.update({f"logged {k}": np.asarray([m[k] for m in logged], np.float64)
              for k in ("step", "loss", "active", "p_act")})
  out.update({f"summary {jax.tree_util.keystr(k)}": np.asarray(v, np.float64)
              for k, v in jax.tree_util.tree_leaves_with_path(summary)})
  return out


def _assert_l3d_close(got: dict, want: dict):
  assert got.keys() == want.keys() and len(want) > 20
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=2e-4, atol=1e-6, err_msg=k)


class _L3DRun:
  """An L3D run started in the background (one process, or several of one run); `result()`
  waits for it and reads its `_l3d_result`, once."""

  def __init__(self, workdir, procs):
    self.workdir, self.procs, self.stderr, self._result = workdir, procs, None, None

  def result(self) -> dict:
    if self._result is None:
      self.stderr = wait(*self.procs)
      self._result = _l3d_result(self.workdir)
    return self._result


# Module-wide runs, started when a test first asks for them so that they overlap its own runs
# (each run is mostly one core's compiling), and shared by the tests that compare with them.
@pytest.fixture(scope="module")
def l3d_single(target_dir, tmp_path_factory):
  d = tmp_path_factory.mktemp("l3d_single") / "run"
  l3d = _L3DRun(d, [start(_l3d_cmd(target_dir, d, 1, 1), 1)])
  yield l3d
  stop(*l3d.procs)  # unless a test waited for it


@pytest.fixture(scope="module")
def l3d_mesh(target_dir, tmp_path_factory):
  d = tmp_path_factory.mktemp("l3d_mesh") / "run"
  l3d = _L3DRun(d, [start(_l3d_cmd(target_dir, d, 2, 4), 8)])
  yield l3d
  stop(*l3d.procs)


def test_l3d_on_a_2x4_mesh_matches_single_device(l3d_single, l3d_mesh):
  """State, logged loss / P_act per epoch and every summary value (reconstruction, bound, P_act,
  specificity, TM1 matches) agree."""
  single, mesh = l3d_single.result(), l3d_mesh.result()
  # the mesh run split its Tucker maps (3 + 3 + 2 arrays per side) and their Adam moments over
  # 'components', the rest replicated
  with open(l3d_mesh.workdir / "checkpoints" / str(L3D_STEPS) / "default" / "_sharding") as f:
    specs = {base64.b64decode(k).decode(): json.loads(v)["partition_spec"]
             for k, v in json.load(f).items()}
  split = {k for k, v in specs.items() if v == ["components"]}
  assert split == {k for k in specs if ".enc." in k or ".dec." in k} and len(split) == 3 * 2 * 8
  assert list(single["logged step"]) == [4, 8, 12, 16]
  _assert_l3d_close(mesh, single)


# slow: restoring onto another mesh is the runner's, checked in the default suite by the APD run
# above; L3D's own partition rules by the 2x4 mesh test
@pytest.mark.slow
def test_l3d_checkpoint_of_a_2x4_mesh_resumes_on_4x2_to_the_same_end(target_dir, l3d_single,
                                                                      l3d_mesh, tmp_path):
  """The 2x4 run's step-8 checkpoint (its last one deleted) continues on a 4x2 mesh to the
  single-device run's state, log and summary."""
  l3d_mesh.result()
  moved = tmp_path / "moved"
  shutil.copytree(l3d_mesh.workdir, moved)
  shutil.rmtree(moved / "checkpoints" / str(L3D_STEPS))
  os.remove(moved / "summary.json")
  l3d = _L3DRun(moved, [start(_l3d_cmd(target_dir, moved, 4, 2, "--resume"), 8)])
  got = l3d.result()
  assert "resuming from step 8 " in l3d.stderr[0]
  _assert_l3d_close(got, l3d_single.result())


# slow: the two-process path is the runner's, checked in the default suite by the APD run above
@pytest.mark.slow
def test_l3d_two_processes_on_loopback_match_single_device(target_dir, l3d_single, tmp_path):
  """2 processes x 4 devices on a 2x4 mesh: the same state, log and summary as one device;
  process 0 alone writes the log (once per epoch), the summary and the figures."""
  multi = tmp_path / "multi"
  got = _L3DRun(multi, two_processes(_l3d_cmd, target_dir, multi, 2, 4)).result()
  _assert_l3d_close(got, l3d_single.result())
  assert all((multi / f).is_file() for f in ("subnetworks.png", "perturbation_sweeps.png"))


@pytest.mark.parametrize("mesh, field, why", [
    ((3, 1), "batch_size", "32 does not divide over run.mesh.data=3 devices"),
    ((1, 3), "run.mesh.components", "l3d.n_subnets=5 subnetworks do not divide over 3 devices")])
def test_l3d_batch_or_subnetworks_not_divisible_over_the_mesh_fail_by_name(mesh, field, why,
                                                                          tmp_path):
  c = l3d_decomposition.default_config()
  c.target_dir = "unused"  # the config is checked before anything is loaded
  c.run.mesh.data, c.run.mesh.components = mesh
  with pytest.raises(ConfigError, match=f"invalid config field '{field}': {why}"):
    l3d_decomposition.decompose(c, str(tmp_path / "x"))
