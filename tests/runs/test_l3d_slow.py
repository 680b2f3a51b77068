"""L3D's toys end to end with the authors' reference outputs (docs/methods/l3d.md §3.1.1, §3.7):
`pytest -m slow tests/runs/test_l3d_slow.py` runs scripts/reproduce_l3d_toys.py (each toy's
target, then decomposition seeds 0, 1, 2) and checks the bars of paramdecomp/runs/l3d_toys.py per
seed (measured: results/l3d_toys.md; durations: results/test_suite.md).
"""
import json
import os
import subprocess
import sys

import pytest

from paramdecomp.runs import l3d_toys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEEDS = (0, 1, 2)


def _reproduce(root, *flags):
  subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "reproduce_l3d_toys.py"),
                  f"--workdir={root}", f"--seeds={','.join(map(str, SEEDS))}", *flags],
                 check=True, cwd=ROOT, capture_output=True)
  with open(os.path.join(root, "reproduction.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
  """{toy: [row per decomposition seed]} with the authors' references."""
  out = {}
  for r in _reproduce(tmp_path_factory.mktemp("l3d")):
    out.setdefault(r["toy"], []).append(r)
  return out


@pytest.mark.slow
@pytest.mark.parametrize("toy", ["tm1", "tm2", "tm3"])
def test_every_bar_on_every_seed(rows, toy):
  """TM1 <= 0.12 with every feature matched; TM2 <= 0.065 with coefficient correlation >= 0.9;
  TM3 (the paper's 10 rank-3 subnetworks) one live per group and the spares dead."""
  assert [r["seed"] for r in rows[toy]] == list(SEEDS)
  failed = {r["seed"]: r["bars"] for r in rows[toy] if not r["bars"]["all"]}
  assert not failed


@pytest.mark.slow
def test_tm4_reconstruction_and_specificity_against_each_features_ceiling(rows):
  """Every seed: reconstruction <= 0.35 and each subnetwork's specificity >= 0.8 x that of its
  feature's own best direction (the ceiling, `feature_direction_specificity`)."""
  for r in rows["tm4"]:
    assert r["bars"]["recon<=0.35"] and r["bars"]["specificity>=0.8xceiling"], r["seed"]


@pytest.mark.slow
def test_the_papers_text_reference_puts_tm1_and_tm2_out_of_reach(tmp_path):
  """With another sample's output as reference (`-batch`) no n_v directions reach the TM1 and TM2
  bars on the paper's data (the bound; docs/notes/l3d_tm1_tm2_bounds.md)."""
  rows = _reproduce(tmp_path, "--toys=tm1,tm2", "--suffix=-batch")
  for r in rows:
    s = r["summary"]
    bar = {"tm1": 0.12, "tm2": 0.065}[r["toy"]]
    assert s["recon_bound_heldout"] > bar
    assert s["recon_bound_heldout"] <= s["recon_heldout_pooled"] + 1e-6
    assert l3d_toys.check(r["toy"], s)["all"] is False


@pytest.mark.slow
def test_tm4_one_subnetwork_per_feature_is_far_from_the_loss_optimum(rows):
  """Why TM4's five features do not get five distinct subnetworks (on no seed): with each
  feature's own best direction as its subnetwork (encoder = decoder, top-k 0.1) the held-out
  reconstruction is more than twice what L3D reaches with shared subnetworks (measured 0.59 vs
  0.22: results/l3d_toys.md), so the loss does not favour that solution."""
  for r in rows["tm4"]:
    s = r["summary"]
    assert not r["bars"]["distinct_features"]
    assert s["feature_direction_recon_heldout"] > 2 * s["recon_heldout"], r["seed"]
