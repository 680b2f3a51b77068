"""LIB reproductions (docs/methods/lib.md §5.6). Slow: `make test-slow`; the modular-addition one
trains the transformer and runs the full build with edge bisections, the digits one is short
(durations: results/test_suite.md; measured figures: results/lib_toys.md)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args):
  subprocess.run([sys.executable, *args], check=True, cwd=ROOT, capture_output=True)


def _train_and_build(tmp_path, model):
  target, work = tmp_path / "target", tmp_path / "lib"
  cfg = {"modadd": ("modadd.py", "lib_modadd.py"), "digits": ("digits_mlp.py", "lib_digits.py")}
  tc, lc = cfg[model]
  _run("scripts/train_toy.py", f"--config=paramdecomp/configs/{tc}", f"--workdir={target}")
  _run("scripts/build_basis.py", f"--config=paramdecomp/configs/{lc}",
       f"--config.target_dir={target}", f"--workdir={work}")
  with open(work / "summary.json") as f:
    return json.load(f)


@pytest.mark.slow
def test_modadd_lib_reproduction(tmp_path):
  s = _train_and_build(tmp_path, "modadd")
  assert s["target"]["test"]["accuracy"] >= 0.99
  for node, need in s["directions_needed"].items():
    assert need["lib"]["0.95"] <= 20, (node, need)      # reference: 7-17 of 129
  lib_edges, pca_edges = s["edges_needed"]["lib"], s["edges_needed"]["pca"]
  assert sum(lib_edges.values()) <= sum(pca_edges.values()), (lib_edges, pca_edges)


@pytest.mark.slow
def test_digits_lib_reproduction(tmp_path):
  s = _train_and_build(tmp_path, "digits")
  assert s["target"]["test"]["accuracy"] >= 0.95
  for node, need in s["directions_needed"].items():
    assert need["lib"]["0.95"] <= need["pca"]["0.95"], (node, need)
  for key, n in s["edges_needed"]["lib"].items():
    assert n <= s["edges_needed"]["pca"][key], (key, s["edges_needed"])
