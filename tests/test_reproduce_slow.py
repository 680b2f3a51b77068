"""The paper's TMS numbers (METHODS.md §1.10). Slow: `make test-slow` (about 30 min on 2 cores)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reproduce(tmp_path, variant, seeds):
  subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "reproduce_apd_tms.py"),
                  f"--variant={variant}", f"--seeds={seeds}", f"--workdir={tmp_path}"],
                 check=True, cwd=ROOT)
  with open(tmp_path / "reproduction.json") as f:
    return json.load(f)


@pytest.mark.slow
def test_apd_tms_5_2_three_seeds(tmp_path):
  rows = _reproduce(tmp_path, "5-2", "1,2,3")
  for r in rows:
    assert r["represented_features"] == 5
    assert r["mmcs"] >= 0.99, r
    assert 0.85 <= r["ml2r"] <= 1.05, r


@pytest.mark.slow
def test_apd_tms_40_10(tmp_path):
  rows = _reproduce(tmp_path, "40-10", "1")
  assert rows[0]["mmcs"] >= 0.98, rows[0]
