"""SPD runs through scripts/decompose_spd.py: a killed run resumes bit-identical, a 2x4 mesh of 8
simulated devices and two processes on loopback match one device, the summary reopens.
Subprocesses: the device count is fixed when jax starts, and the runs are float32 (the tests run
in x64)."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from paramdecomp.core.checkpoint import Checkpointer
from paramdecomp.core.config import ConfigError
from paramdecomp.methods import spd
from paramdecomp.runs import analyse, restarts
from paramdecomp.runs import targets as training

from _procs import ROOT, env, final, run, two_processes, wait

SCRIPT = os.path.join(ROOT, "scripts", "decompose_spd.py")
CONFIG = os.path.join(ROOT, "paramdecomp", "configs", "spd_tms.py")


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("target"))
  c = training.default_config()
  c.seed, c.optim.steps, c.run.log_every, c.run.steps_per_dispatch = 1, 500, 0, 500
  training.train_target(c, d)
  return d


def _cmd(target_dir, workdir, steps, *extra):
  return [sys.executable, SCRIPT, f"--config={CONFIG}:5-2", f"--workdir={workdir}",
          f"--config.target_dir={target_dir}", f"--config.optim.steps={steps}",
          "--config.batch_size=256", "--config.spd.C=8", "--config.run.steps_per_dispatch=20",
          "--config.run.checkpoint_every=20", "--config.run.log_every=20", *extra]


def _logged(d):  # metrics.jsonl without the timing column
  with open(os.path.join(d, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k != "steps_per_s"} for line in f]


def test_killed_spd_run_resumes_bit_identical_and_reanalyses_to_its_summary(target_dir,
                                                                            tmp_path):
  steps = 1000
  full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
  run(_cmd(target_dir, full, steps))
  proc = subprocess.Popen(_cmd(target_dir, killed, steps), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=env(), cwd=ROOT)
  ckdir = os.path.join(killed, "checkpoints")
  deadline = time.time() + 180
  while time.time() < deadline and proc.poll() is None:
    done = [int(s) for s in os.listdir(ckdir) if s.isdigit()] if os.path.isdir(ckdir) else []
    if done and max(done) >= 100:
      break
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  stopped_at = Checkpointer(killed).latest_step()
  assert stopped_at is not None and stopped_at < steps, "the run was not killed mid-way"
  run(_cmd(target_dir, killed, steps, "--resume"))
  a, b = final(full, steps), final(killed, steps)
  assert _logged(killed) == _logged(full)
  assert [r["step"] for r in _logged(full)] == list(range(20, steps + 1, 20))
  assert len(a) == len(b) > 8
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  with open(os.path.join(full, "summary.json")) as f:
    summary = json.load(f)
  run([sys.executable, os.path.join(ROOT, "scripts", "analyse_run.py"), f"--workdir={full}"])
  with open(os.path.join(full, f"analysis_{steps}", "summary.json")) as f:
    again = json.load(f)
  for k in ("loss", "faithfulness", "stochastic_recon", "mmcs", "ml2r", "non_negligible"):
    assert again[k] == summary[k], k
  assert os.path.isfile(summary["ci_figure"]) and summary["n_features"] == 5


MESH_STEPS = 40
_MESH = ("--config.run.mesh.data=2", "--config.run.mesh.components=4")


@pytest.fixture(scope="module")
def one_device(target_dir, tmp_path_factory):
  d = tmp_path_factory.mktemp("one") / "run"
  run(_cmd(target_dir, d, MESH_STEPS))
  return d


def _assert_matches(got, want):
  assert len(got) == len(want) > 8
  for x, y in zip(want, got):
    np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-7)


def test_spd_on_a_2x4_mesh_of_8_devices_matches_one_device(target_dir, one_device, tmp_path):
  run(_cmd(target_dir, tmp_path / "mesh", MESH_STEPS, *_MESH), devices=8)
  _assert_matches(final(tmp_path / "mesh", MESH_STEPS), final(one_device, MESH_STEPS))
  with open(tmp_path / "mesh" / "checkpoints" / str(MESH_STEPS) / "default" / "_sharding") as f:
    specs = [json.loads(v)["partition_spec"] for v in json.load(f).values()]
  assert sum(s == ["components"] for s in specs) >= 3 * 6   # U, V, 4 CI arrays per site


# slow: the two-process path is the runner's, checked in the default suite by the APD run
# (tests/runs/test_sharding.py); SPD's own partition rules by the 8-device mesh above
@pytest.mark.slow
def test_spd_two_processes_on_loopback_match_one_device(target_dir, one_device, tmp_path):
  """2 processes x 4 devices on the 2x4 mesh (jax.distributed over loopback, gloo collectives):
  the same state as one device; process 0 alone writes the log and the summary."""
  multi = tmp_path / "multi"
  wait(*two_processes(_cmd, target_dir, multi, MESH_STEPS, *_MESH))
  _assert_matches(final(multi, MESH_STEPS), final(one_device, MESH_STEPS))
  assert [r["step"] for r in _logged(multi)] == [20, 40]   # once per step: process 0's log
  got, want = (json.loads((d / "summary.json").read_text()) for d in (multi, one_device))
  assert got["non_negligible"] == want["non_negligible"]
  for k in ("loss", "mmcs", "ml2r", "stochastic_recon"):
    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, err_msg=k)


def test_restarts_are_picked_by_the_loss_on_shared_batches_and_must_share_a_config(
    target_dir, one_device, tmp_path):
  """scripts/pick_restart.py on two seeds of one config: each run's final loss on the fixed
  batch (key 1000) and loss key (2000) is the method's loss of its last state recomputed here,
  the pick is the lower; a run of another length is refused by name."""
  other, short = tmp_path / "seed7", tmp_path / "short"
  run(_cmd(target_dir, other, MESH_STEPS, "--config.seed=7"))
  out = tmp_path / "pick.json"
  run([sys.executable, os.path.join(ROOT, "scripts", "pick_restart.py"),
       f"--workdirs={one_device},{other}", "--batches=1", f"--out={out}"])
  got = json.loads(out.read_text())
  losses = [r["loss"] for r in got["rows"]]
  assert got["pick"] == int(np.argmin(losses)) and losses[0] != losses[1]
  _, tcfg, _ = training.load_target(target_dir)
  f32 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float32), t)
  for w, r in zip((one_device, other), got["rows"]):
    rr = analyse.load_run(str(w))
    with jax.enable_x64(False):   # as the run: float32 (float64 draws other batches and masks)
      x = training.batch(jax.random.PRNGKey(1000), tcfg, 256)
      want, _ = spd.loss(f32(rr.state), f32(rr.params), x, jax.random.PRNGKey(2000),
                         apply=rr.apply, cfg=rr.config.spd)
    np.testing.assert_allclose(r["loss"], float(want), rtol=1e-5)
    assert r["step"] == MESH_STEPS and r["seed"] == (7 if w == other else 0)
  run(_cmd(target_dir, short, 20))
  with pytest.raises(ConfigError, match="'optim.steps'"):
    restarts.final_losses([str(one_device), str(short)])


def test_subcomponents_not_divisible_over_the_mesh_fail_by_name(tmp_path):
  r = subprocess.run(_cmd("unused", tmp_path / "x", 10, "--config.run.mesh.components=3"),
                     capture_output=True, text=True, env=env(8), cwd=ROOT)
  assert r.returncode != 0
  assert "invalid config field 'run.mesh.components': C=8 subcomponents do not divide" in r.stderr
