"""The built wheel: what it installs, and that an installed copy works outside the repository."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  """The wheel of the tracked sources, built from a copy of them: an in-tree build reuses (and
  leaves) build/, whose stale files would hide a module the package no longer ships."""
  src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
  files = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.split()
  for f in files:
    dest = src / f
    dest.parent.mkdir(parents=True, exist_ok=True)
    if os.path.islink(os.path.join(ROOT, f)):
      os.symlink(os.readlink(os.path.join(ROOT, f)), dest)
    else:
      shutil.copy2(os.path.join(ROOT, f), dest)
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(src), "-w",
                  str(out)], check=True, capture_output=True)
  (path,) = [out / f for f in os.listdir(out) if f.endswith(".whl")]
  return path


SMOKE = """
import jax, optax, sys
import paramdecomp
from paramdecomp import apd
from paramdecomp.core import train
from paramdecomp.toy_models import registry
from paramdecomp.configs import apd_tms
assert paramdecomp.__file__.startswith(sys.argv[1]), paramdecomp.__file__
t = registry.get("tms")
c = apd_tms.get_config("5-2")
params = t.init(jax.random.PRNGKey(0), t.model_config())
opt = optax.adam(1e-3)
state = train.init_state(apd.init(jax.random.PRNGKey(1), params, c.apd), opt, jax.random.PRNGKey(2))
batch = lambda k: jax.random.uniform(k, (64, 5))
out = train.fit(state, params, apd.make_update(t.make_apply(None), c.apd, batch, opt),
                total_steps=10, workdir=None, log_every=0, steps_per_dispatch=10, quiet=True)
print("ok", int(out.step))
"""


def test_wheel_holds_the_package_and_no_top_level_toy_models(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
  assert tops == {"paramdecomp"}
  for want in ("paramdecomp/toy_models/registry.py", "paramdecomp/configs/apd_tms.py",
               "paramdecomp/runs/runner.py", "paramdecomp/core/train.py"):
    assert want in names


def test_installed_wheel_runs_outside_the_repository(wheel, tmp_path):
  """Installed into a folder of its own (the dependencies from this environment), run from
  elsewhere: the toys import under the package name and an APD step runs."""
  target = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                  str(target), str(wheel)], check=True, capture_output=True)
  env = {**os.environ, "PYTHONPATH": str(target)}
  r = subprocess.run([sys.executable, "-c", SMOKE, str(target)], cwd=tmp_path, env=env,
                     capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.split()[-2:] == ["ok", "10"]


@pytest.mark.slow
def test_fresh_venv_installs_the_wheel_with_its_dependencies(wheel, tmp_path):
  """`pip install <wheel>` into a new venv (dependencies from the index, at the locked
  versions): the smoke run works."""
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
  py = str(venv / "bin" / "python")
  subprocess.run([py, "-m", "pip", "install", "-q", str(wheel), "-c",
                  os.path.join(ROOT, "requirements.lock")], check=True, capture_output=True)
  site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        capture_output=True, text=True, check=True).stdout.strip()
  r = subprocess.run([py, "-c", SMOKE, site], cwd=tmp_path, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.split()[-2:] == ["ok", "10"]
