"""Runs as subprocesses, for the run tests: the simulated device count is fixed when jax starts,
so a mesh of N devices (or a process of a multi-host run) needs its own interpreter."""
import os
import socket
import subprocess

import jax
import numpy as np

from paramdecomp.core.checkpoint import load_tree

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def env(devices: int = 1) -> dict:
  """The test's environment with `devices` simulated CPU devices (other XLA flags kept).

  The device count goes first: XLA stops reading XLA_FLAGS at the first word without `--`."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  flags.insert(0, f"--xla_force_host_platform_device_count={devices}")
  return dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")


def run(cmd, devices: int = 1):
  """Runs `cmd` on `devices` simulated CPU devices; it must succeed."""
  r = subprocess.run(cmd, capture_output=True, text=True, env=env(devices), cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]


def start(cmd, devices: int) -> subprocess.Popen:
  return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env(devices), cwd=ROOT)


def wait(*procs) -> list[str]:
  """The stderr of each of `procs`, which must all succeed (any left running when one fails are
  stopped)."""
  errs = []
  try:
    for p in procs:
      _, err = p.communicate(timeout=300)
      assert p.returncode == 0, err[-3000:]
      errs.append(err)
  finally:
    stop(*procs)
  return errs


def stop(*procs):
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.communicate()


def two_processes(cmd, *args) -> list[subprocess.Popen]:
  """Processes 0 and 1 of a run on loopback, 4 devices each: `cmd(*args, *distributed flags)`."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return [start(cmd(*args, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                    f"--process_id={i}"), 4) for i in range(2)]


def final(workdir, step: int) -> list[np.ndarray]:
  """The leaves of the run's checkpointed state at `step`."""
  tree = load_tree(os.path.join(workdir, "checkpoints", str(step), "default"))
  return [np.asarray(x) for x in jax.tree.leaves(tree)]
