"""examples/bring_your_own_model.py runs: a linen MLP, an NNX MLP and an imported GPT-2
checkpoint (PyTorch's when torch and transformers are installed) through APD, L3D and LIB."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


@pytest.mark.slow
def test_the_example_hands_each_model_to_each_method():
  env = {**os.environ, "PYTHONPATH": os.path.abspath(ROOT)}
  env.pop("JAX_ENABLE_X64", None)
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples",
                                                      "bring_your_own_model.py"), "--steps=10"],
                        capture_output=True, text=True, timeout=1200, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("linen MLP", "NNX MLP", "imported gpt2"):
    for method in ("APD on", "L3D reconstruction", "LIB basis sizes"):
      assert f"{name}" in proc.stdout and any(
          line.startswith(name) and method in line for line in proc.stdout.splitlines()), (
              name, method, proc.stdout)
