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
from paramdecomp.core.checkpoint import Checkpointer, MissingCheckpointError, load_tree
from paramdecomp.core.config import ConfigError
from paramdecomp.runs import decompose_apd as decomposition
from paramdecomp.runs import targets as training

from _procs import ROOT, final


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
  a, b = final(full, steps), final(killed, steps)
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
  from paramdecomp.toy_models import registry, squares
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
  saved = load_tree(os.path.join(ck.directory, "20", "default"))["params"]["factors"]
  comps = apd.State({p: Factors(**f) for p, f in saved.items()})   # U, V restored as arrays
  ck.close()
  x = registry.get("squares").batch(jax.random.fold_in(jax.random.PRNGKey(c.seed), 2), tcfg, 64)
  assert squares.apply_for(tcfg.model) is not squares.apply
  for act, want_match in (("elu", True), ("gelu", False)):
    apply = squares.make_apply(act)
    _, m = apd.loss(comps, params, x, None, apply=apply, cfg=c.apd)
    assert np.isclose(float(m["minimality"]), s["minimality"], rtol=1e-5) == want_match, act


def test_reopened_l3d_run_reproduces_its_summary(tmp_path):
  """`runs.analyse` finds the method from config.json and summarises a saved L3D step exactly
  as the run itself did."""
  from paramdecomp.runs import analyse, decompose_l3d
  t = training.default_config()
  t.data.update(dict(reject_zero=True, batch_size=32))
  t.optim.steps, t.run.log_every, t.run.steps_per_dispatch = 100, 0, 100
  training.train_target(t, str(tmp_path / "t"))
  d = decompose_l3d.default_config()
  d.target_dir, d.target_view = str(tmp_path / "t"), "untied"
  d.epochs, d.n_samples, d.n_eval, d.batch_size = 2, 64, 64, 32
  d.run.update(dict(log_every=0, checkpoint_every=1))
  s = decompose_l3d.decompose(d, str(tmp_path / "d"))
  assert analyse.spec_of(str(tmp_path / "d")) is decompose_l3d.SPEC
  again = analyse.analyse_checkpoint(str(tmp_path / "d"))
  assert again["step"] == 4
  for k in ("recon_train", "recon_heldout", "p_act", "specificity", "tms"):
    assert again[k] == s[k], k
  with pytest.raises(MissingCheckpointError, match="no run"):
    analyse.spec_of(str(tmp_path))


def test_load_run_reopens_state_types_metrics_and_summary(target_dir, tmp_path, caplog):
  """`paramdecomp.load_run`: the method state with its own types (the tree structure `init`
  makes), the logged metrics and the summary; no orbax warnings on the way."""
  import paramdecomp
  from paramdecomp.methods import apd
  c = decomposition.default_config()
  c.target_dir, c.optim.steps, c.batch_size = target_dir, 40, 64
  c.run.update(dict(log_every=20, checkpoint_every=20, steps_per_dispatch=20))
  s = decomposition.decompose(c, str(tmp_path / "run"))
  caplog.clear()
  run = paramdecomp.load_run(str(tmp_path / "run"))
  assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
  assert run.method == "apd" and run.step == 40 and run.summary == s
  assert [r["step"] for r in run.metrics] == [20, 40]
  like = apd.init(jax.random.PRNGKey(0), run.params, c.apd)
  assert jax.tree.structure(run.state) == jax.tree.structure(like)
  half = paramdecomp.load_run(str(tmp_path / "run"), step=20)
  assert half.step == 20
  assert not np.array_equal(jax.tree.leaves(half.state)[0], jax.tree.leaves(run.state)[0])
  # a step directory reads whole, without the '/default' suffix
  raw = load_tree(str(tmp_path / "run" / "checkpoints" / "40"))
  np.testing.assert_array_equal(jax.tree.leaves(raw["params"])[0], jax.tree.leaves(run.state)[0])


def test_a_users_own_model_is_a_target_for_the_scripts(tmp_path, monkeypatch):
  """A user's module (apply and batch by module path) and an .npz of weights: saved with
  scripts/save_target.py, decomposed by scripts/decompose.py and re-analysed by analyse_run.py,
  the runs seeing the user's network (a registered toy is not involved)."""
  (tmp_path / "my_model.py").write_text(
      "import jax, jax.numpy as jnp\n"
      "def apply(params, x):\n"
      "  return jnp.tanh(x @ params['enc']['w']) @ params['dec']['w']\n"
      "def batch(key, n):\n"
      "  return jax.random.uniform(key, (n, 4), jnp.float32)\n")
  w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  np.savez(tmp_path / "weights.npz", **{"enc/w": w, "dec/w": w.T.copy()})
  env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
  run = lambda script, *a: subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script),
                                           *a], check=True, capture_output=True, text=True,
                                          env=env)
  run("save_target.py", f"--params={tmp_path / 'weights.npz'}", "--apply=my_model:apply",
      "--batch=my_model:batch", f"--workdir={tmp_path / 'target'}")
  out = run("decompose.py", f"--config={CONFIG}:5-2", f"--workdir={tmp_path / 'apd'}",
            f"--config.target_dir={tmp_path / 'target'}", "--config.optim.steps=20",
            "--config.run.steps_per_dispatch=10", "--config.run.checkpoint_every=10",
            "--config.apd.decompose=('enc/w', 'dec/w')", "--config.apd.C=3", "--config.apd.m=1",
            "--config.apd.topk=1.0", "--config.batch_size=32")
  s = json.loads(out.stdout[out.stdout.index("{"):])
  again = run("analyse_run.py", f"--workdir={tmp_path / 'apd'}")
  a = json.loads(again.stdout[again.stdout.index("{"):])
  assert a["step"] == 20 and a["minimality"] == s["minimality"]
  # the summary's loss is the user's network's: recomputed here from the saved components
  monkeypatch.syspath_prepend(str(tmp_path))   # the user's module, as on their PYTHONPATH
  import importlib
  import paramdecomp
  from paramdecomp.methods import apd
  mod = importlib.import_module("my_model")
  r = paramdecomp.load_run(str(tmp_path / "apd"))
  x = mod.batch(jax.random.fold_in(jax.random.PRNGKey(r.config.seed), 2), 32)
  params = {"enc": {"w": jnp.asarray(w)}, "dec": {"w": jnp.asarray(w.T)}}
  _, m = apd.loss(r.state, params, x, None, apply=mod.apply, cfg=r.config.apd)
  np.testing.assert_allclose(float(m["minimality"]), s["minimality"], rtol=1e-5)
