"""Run-level behaviour: kill and resume, refusing to overwrite, missing checkpoints, bad configs."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paramdecomp.core import train
from paramdecomp.core.checkpoint import Checkpointer, MissingCheckpointError, load_on_one_device
from paramdecomp.core.config import ConfigError
from paramdecomp.runs import decompose_apd as decomposition
from paramdecomp.runs import targets as training

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DECOMPOSE = os.path.join(ROOT, "scripts", "decompose.py")
CONFIG = os.path.join(ROOT, "paramdecomp", "configs", "apd_tms.py")


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("target"))
  c = training.default_config()
  c.seed, c.optim.steps, c.run.log_every, c.run.steps_per_dispatch = 1, 1000, 0, 500
  training.train_target(c, d)
  return d


def _decompose_cmd(target_dir, workdir, steps, *extra):
  return [sys.executable, DECOMPOSE, f"--config={CONFIG}:5-2", f"--workdir={workdir}",
          f"--config.target_dir={target_dir}", f"--config.optim.steps={steps}",
          "--config.run.checkpoint_every=100", "--config.run.steps_per_dispatch=50",
          "--config.run.log_every=100", *extra]


def _final_state(workdir, step):
  return jax.tree.leaves(load_on_one_device(os.path.join(workdir, "checkpoints", str(step),
                                                         "default")))


def test_killed_run_resumes_bit_identical(target_dir, tmp_path):
  steps = 3000
  full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
  subprocess.run(_decompose_cmd(target_dir, full, steps), check=True, capture_output=True)

  proc = subprocess.Popen(_decompose_cmd(target_dir, killed, steps),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckdir = os.path.join(killed, "checkpoints")
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    done = [int(s) for s in os.listdir(ckdir) if s.isdigit()] if os.path.isdir(ckdir) else []
    if done and max(done) >= 300:
      break
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  stopped_at = Checkpointer(killed).latest_step()
  assert stopped_at is not None and stopped_at < steps, "the run was not killed mid-way"

  subprocess.run(_decompose_cmd(target_dir, killed, steps, "--resume"), check=True,
                 capture_output=True)
  a, b = _final_state(full, steps), _final_state(killed, steps)
  def logged(d):  # metrics.jsonl without the timing column
    with open(os.path.join(d, "metrics.jsonl")) as f:
      return [{k: v for k, v in json.loads(line).items() if k != "steps_per_s"} for line in f]
  assert logged(killed) == logged(full)
  assert [r["step"] for r in logged(full)] == list(range(100, steps + 1, 100))
  assert len(a) == len(b) and len(a) > 4
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  # re-analysing the final checkpoint reproduces the run's own summary
  with open(os.path.join(full, "summary.json")) as f:
    summary = json.load(f)
  # (a subprocess: the tests run with x64 on, the run itself did not)
  subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "analyse_run.py"),
                  f"--workdir={full}"], check=True, capture_output=True)
  with open(os.path.join(full, f"analysis_{steps}", "summary.json")) as f:
    again = json.load(f)
  assert again["step"] == steps
  for k in ("loss", "faithfulness", "minimality", "mmcs", "ml2r", "component_use"):
    assert again[k] == summary[k], k


def test_existing_run_is_never_overwritten_and_missing_checkpoints_are_named(target_dir,
                                                                            tmp_path):
  c = decomposition.default_config()
  c.target_dir, c.optim.steps, c.run.checkpoint_every = target_dir, 100, 100
  c.run.log_every = 0
  with pytest.raises(MissingCheckpointError, match="no checkpoint"):
    decomposition.decompose(c, str(tmp_path / "fresh"), resume=True)
  decomposition.decompose(c, str(tmp_path / "run"))
  saved = os.listdir(tmp_path / "run" / "checkpoints")
  with pytest.raises(FileExistsError, match="--resume"):
    decomposition.decompose(c, str(tmp_path / "run"))
  assert os.listdir(tmp_path / "run" / "checkpoints") == saved
  with pytest.raises(MissingCheckpointError, match="no trained target"):
    training.load_target(str(tmp_path / "nothing"))


def test_non_finite_loss_stops_before_saving(tmp_path):
  def loss_fn(p, frozen, key):
    # finite for the first 200 steps, then NaN
    return jnp.where(p["step"] < 200, jnp.sum(p["w"] ** 2), jnp.nan), {}

  def update(state, frozen):
    new, m = base(state, frozen)
    return new._replace(params={**new.params, "step": state.params["step"] + 1}), m

  opt = optax.sgd(0.01)
  base = train.make_update(loss_fn, opt)
  state = train.init_state({"w": jnp.ones(3), "step": jnp.zeros(())}, opt, jax.random.PRNGKey(0))
  ck = Checkpointer(str(tmp_path))
  with pytest.raises(train.NonFiniteLossError, match="non-finite loss.*200..300"):
    train.fit(state, None, update, total_steps=1000, workdir=str(tmp_path), log_every=100,
              steps_per_dispatch=100, checkpoint_every=100, checkpointer=ck)
  ck.wait()
  assert ck.latest_step() == 200


def test_misspelt_and_invalid_config_fields_fail_at_once(target_dir, tmp_path):
  r = subprocess.run(_decompose_cmd(target_dir, str(tmp_path / "a"), 10, "--config.apd.topkk=1"),
                     capture_output=True, text=True)
  assert r.returncode != 0 and "topkk" in r.stderr
  r = subprocess.run(_decompose_cmd(target_dir, str(tmp_path / "b"), 10,
                                    "--config.apd.attribution=gradients"),
                     capture_output=True, text=True)
  assert r.returncode != 0 and "invalid config field 'apd.attribution'" in r.stderr
  assert not os.path.exists(tmp_path / "b" / "checkpoints")
  c = decomposition.default_config()
  c.target_dir = target_dir
  c.optim.stepz = 10   # a config file may build fields the schema lacks
  with pytest.raises(ConfigError, match="'optim.stepz'.*'optim.steps'"):
    decomposition.decompose(c, str(tmp_path / "c"))


def test_apd_decomposes_the_configured_network_not_the_modules_default(tmp_path):
  """A squares target built with ELU: the run decomposes the ELU network (the runner used to
  pass the module's GELU `apply`). The summary's final losses are recomputed from the saved
  components with each activation: they match the ELU network's only."""
  from paramdecomp.configs import apd_tms
  from paramdecomp.core.lowrank import Factors
  from paramdecomp.methods import apd
  from toy_models import registry, squares
  t = training.default_config()
  t.model = squares.model_config(n_features=3, width=4, n_hidden_layers=1, activation="elu")
  t.data.update(dict(p=0.3, lo=-1.0, hi=1.0, batch_size=64))
  t.optim.steps, t.run.log_every, t.run.steps_per_dispatch = 100, 0, 100
  training.train_target(t, str(tmp_path / "t"))
  c = apd_tms.get_config("5-2")
  c.target_dir, c.batch_size = str(tmp_path / "t"), 64
  c.apd.update(dict(decompose=("layers/.*/w",), C=3, m=1, topk=1.0))
  c.optim.steps, c.run.steps_per_dispatch, c.run.log_every = 20, 20, 0
  s = decomposition.decompose(c, str(tmp_path / "apd"))
  _, tcfg, params = training.load_target(str(tmp_path / "t"))
  ck = Checkpointer(str(tmp_path / "apd"))
  saved = load_on_one_device(os.path.join(ck.directory, "20", "default"))["params"]["factors"]
  comps = apd.State({p: Factors(**f) for p, f in saved.items()})   # U, V restored as arrays
  ck.close()
  x = registry.get("squares").batch(jax.random.fold_in(jax.random.PRNGKey(c.seed), 2), tcfg, 64)
  assert squares.apply_for(tcfg.model) is not squares.apply
  for act, want_match in (("elu", True), ("gelu", False)):
    apply = squares.make_apply(act)
    _, m = apd.loss(comps, params, x, None, apply=apply, cfg=c.apd)
    assert np.isclose(float(m["minimality"]), s["minimality"], rtol=1e-5) == want_match, act
