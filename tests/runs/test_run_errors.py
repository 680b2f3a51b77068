"""Runs that must not lie about themselves, and errors in the library's language (issue 12,
items 13-15): resuming with another config, misspelt overrides, a NaN in the target, failed
starts."""
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from paramdecomp.core.checkpoint import Checkpointer
from paramdecomp.core.pytree import NonFiniteError
from paramdecomp.core.train import NonFiniteLossError
from paramdecomp.runs import decompose_apd, decompose_l3d, runner
from paramdecomp.runs import targets as training
from paramdecomp.runs.targets import load_target, save_target

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("target"))
  c = training.default_config()
  c.data.update(dict(reject_zero=True, batch_size=32))
  c.optim.steps, c.run.log_every, c.run.steps_per_dispatch = 100, 0, 100
  training.train_target(c, d)
  return d


def _apd(target_dir, steps=20):
  c = decompose_apd.default_config()
  c.target_dir, c.batch_size, c.optim.steps = target_dir, 64, steps
  c.run.update(dict(log_every=0, checkpoint_every=10, steps_per_dispatch=10))
  return c


def _l3d(target_dir, epochs=2):
  d = decompose_l3d.default_config()
  d.target_dir, d.target_view = target_dir, "untied"
  d.epochs, d.n_samples, d.n_eval, d.batch_size = epochs, 64, 64, 32
  d.run.update(dict(log_every=0, checkpoint_every=1))
  return d


def test_resume_with_another_config_is_refused_naming_the_field(target_dir, tmp_path):
  """APD and L3D: a resumed run keeps its own config; the run's record is left as it was."""
  for make, run, field, value in ((_apd, decompose_apd.decompose, "apd.C", 6),
                                  (_l3d, decompose_l3d.decompose, "l3d.n_subnets", 4)):
    w = str(tmp_path / field)
    c = make(target_dir)
    run(c, w)
    with open(os.path.join(w, "config.json")) as f:
      before = f.read()
    other = make(target_dir)
    section, name = field.split(".")
    other[section][name] = value
    with pytest.raises(runner.ResumeMismatchError, match=rf"'{field}'.*made with 5"):
      run(other, w, resume=True)
    reseeded = make(target_dir)
    reseeded.seed = 1
    with pytest.raises(runner.ResumeMismatchError, match="'seed'"):
      run(reseeded, w, resume=True)
    with open(os.path.join(w, "config.json")) as f:
      assert f.read() == before
    longer = make(target_dir, 4 if section == "l3d" else 40)
    longer.run.log_every = 1 if section == "l3d" else 10      # the run section may change
    run(longer, w, resume=True)
    with open(os.path.join(w, "config.json")) as f:
      assert f.read() == before                             # written by the fresh run only
    ck = Checkpointer(w)
    assert ck.latest_step() == (8 if section == "l3d" else 40)
    ck.close()


def test_scripts_give_one_line_errors(target_dir, tmp_path):
  script = os.path.join(ROOT, "scripts", "decompose.py")
  cfg = os.path.join(ROOT, "paramdecomp", "configs", "apd_tms.py") + ":5-2"
  base = [sys.executable, script, f"--config={cfg}", f"--config.target_dir={target_dir}",
          "--config.optim.steps=20", "--config.run.steps_per_dispatch=10",
          "--config.run.checkpoint_every=10", "--config.batch_size=64"]

  def run(*extra):
    return subprocess.run(base + list(extra), capture_output=True, text=True)

  typo = run("--config.apd.CC=3", f"--workdir={tmp_path / 'typo'}")
  assert typo.returncode != 0
  assert typo.stderr.strip().splitlines() == [
      "error: unknown config field 'apd.CC'; did you mean 'apd.C'?"]
  assert not os.path.exists(tmp_path / "typo")
  w = str(tmp_path / "run")
  assert run(f"--workdir={w}").returncode == 0
  wrong = run(f"--workdir={w}", "--config.apd.C=7", "--resume")
  assert wrong.returncode == 1
  last = wrong.stderr.strip().splitlines()[-1]
  assert last.startswith("error: invalid config field 'apd.C': is 7 here"), wrong.stderr
  assert "Traceback" not in wrong.stderr


def test_a_nan_in_the_target_is_named_and_a_failed_start_leaves_nothing(target_dir, tmp_path):
  t, tcfg, params = load_target(target_dir)
  bad = str(tmp_path / "bad_target")
  os.makedirs(bad)
  save_target(bad, tcfg, {**params, "W": params["W"].at[1, 3].set(jnp.nan)})
  w = tmp_path / "apd"
  with pytest.raises(NonFiniteError, match=r"1 non-finite value\(s\) in 'W'"):
    decompose_apd.decompose(_apd(bad), str(w))
  assert not w.exists()
  # a run that fails before its first checkpoint (here: its loss overflows) leaves nothing
  c = _apd(target_dir)
  c.optim.lr = 1e200
  with pytest.raises(NonFiniteLossError, match="non-finite loss at step"):
    decompose_apd.decompose(c, str(w))
  assert not w.exists()
  # ... but a directory that holds a run is never touched
  decompose_apd.decompose(_apd(target_dir), str(w))
  saved = sorted(os.listdir(w / "checkpoints"))
  with pytest.raises(NonFiniteLossError):
    decompose_apd.decompose(c, str(tmp_path / "apd2"))
  c.optim.steps = 40
  with pytest.raises(runner.ResumeMismatchError, match="optim.lr"):
    decompose_apd.decompose(c, str(w), resume=True)
  assert sorted(os.listdir(w / "checkpoints")) == saved and (w / "config.json").exists()


def test_checkpointer_errors_speak_the_librarys_language(tmp_path):
  ck = Checkpointer(str(tmp_path))
  ck.save(1, {"a": jnp.zeros(2)})
  ck.wait()
  with pytest.raises(FileExistsError) as e:
    ck.start({"a": jnp.zeros(2)}, resume=False)
  assert "resume=True" in str(e.value) and "pass --resume" not in str(e.value)
  ck.close()
