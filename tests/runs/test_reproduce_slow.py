"""The APD paper's TMS and ResidMLP results (docs/methods/apd.md §1.10). Slow: `make test-slow`
(durations: results/test_suite.md; measured figures: results/apd_tms.md, results/apd_resid_mlp.md).
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _reproduce(tmp_path, variant, seeds):
  subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "reproduce_apd_tms.py"),
                  f"--variant={variant}", f"--seeds={seeds}", f"--workdir={tmp_path}"],
                 check=True, cwd=ROOT)
  with open(tmp_path / "reproduction.json") as f:
    return json.load(f)


@pytest.mark.slow
def test_apd_tms_5_2_ten_seeds(tmp_path):
  """Issue 13's bar: MMCS >= 0.99 on at least 9 of 10 seeds (targets and decompositions 0-9, one
  vmapped sweep with the runner's keys). The default's spare component (C = 6) is what gets
  there: with the paper's C = 5 it is about 6 of 10 (results/apd_tms.md)."""
  out = tmp_path / "rows.json"
  config = os.path.join(ROOT, "paramdecomp", "configs", "apd_tms.py")
  subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "sweep_tms_seeds.py"),
                  "--seeds=10", f"--config={config}:5-2",
                  f"--out={out}"], check=True, cwd=ROOT)
  rows = json.loads(out.read_text())
  assert all(r["represented_features"] == 5 for r in rows)
  assert sum(r["mmcs"] >= 0.99 and r["merged"] == 0 for r in rows) >= 9, rows


@pytest.mark.slow
@pytest.mark.parametrize("size", ["9-3", "10-4", "11-4", "12-4"])
def test_apd_tms_other_sizes(tmp_path, size):
  """Issue 13's bar for the sizing rule (`apd_tms.sized`): MMCS >= 0.98 on at least 2 of 3 seeds
  at each size from 9-3 to 12-4 whose targets represent every feature (about 4 min each on one
  core). With the 5-2 coefficients at every size, the rule before, 10-4 and 11-4 got 0 and 1
  of 3; with the 40-10 ones at every size, 9-3 got 0 of 3. 10-4 meets it with no margin (2 of
  3: seed 2 merges a pair), results/apd_tms.md."""
  out = tmp_path / "rows.json"
  configs = os.path.join(ROOT, "paramdecomp", "configs")
  subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "sweep_tms_seeds.py"),
                  "--seeds=3", f"--target={configs}/tms.py:{size}",
                  f"--config={configs}/apd_tms.py:{size}", f"--out={out}"], check=True, cwd=ROOT)
  rows = json.loads(out.read_text())
  n = int(size.split("-")[0])
  assert all(r["represented_features"] == n for r in rows), rows
  assert sum(r["mmcs"] >= 0.98 for r in rows) >= 2, rows


@pytest.mark.slow
def test_apd_tms_40_10(tmp_path):
  rows = _reproduce(tmp_path, "40-10", "1,2,3")
  assert sum(r["mmcs"] >= 0.98 for r in rows) >= 2, rows


@pytest.mark.slow
def test_resid_mlp_1_layer_target(tmp_path):
  """§1.9: the target undershoots 2x at x = 1 (about 1.6) and beats the monosemantic baseline."""
  subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train_toy.py"),
                  f"--config={os.path.join(ROOT, 'paramdecomp', 'configs', 'resid_mlp.py')}:1-layer",
                  f"--workdir={tmp_path}"], check=True, cwd=ROOT)
  with open(tmp_path / "target_report.json") as f:
    rep = json.load(f)
  assert rep["mse"] < rep["monosemantic_mse"]
  assert 1.5 <= rep["response_at_1_mean"] <= 1.75


def _decompose_resid_mlp(tmp_path, variant, *flags):
  configs = os.path.join(ROOT, "paramdecomp", "configs")
  subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train_toy.py"),
                  f"--config={os.path.join(configs, 'resid_mlp.py')}:{variant[:7]}",
                  f"--workdir={tmp_path / 'target'}"], check=True, cwd=ROOT)
  subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "decompose.py"),
                  f"--config={os.path.join(configs, 'apd_resid_mlp.py')}:{variant}",
                  f"--config.target_dir={tmp_path / 'target'}",
                  f"--workdir={tmp_path / 'apd'}", *flags], check=True, cwd=ROOT)
  with open(tmp_path / "apd" / "summary.json") as f:
    return json.load(f)


def _assert_paper_picture(s, distinct, mono, anti_rise):
  """One component per feature with the target's neurons; scrubbing as costly as for the ideal
  per-feature decomposition of the same target (`resid_mlp_apd.ideal_masked_apply`, whose
  anti-scrubbed / scrubbed ratio is itself small, docs/notes/apd_resid_mlp_scrubbing.md); and
  ablations that raise the MSE of the unablated APD model (its top-k pass) a little when they
  spare the responsible components and `anti_rise` times or more when they hit them."""
  f, sc = s["features"], s["scrubbing"]
  assert f["distinct_best_components"] >= distinct
  assert f["single_dominant_fraction"] >= 0.9
  assert f["neuron_contribution_cosine_median"] >= 0.95
  assert s["component_counts"]["monosemantic"] >= mono
  assert sc["scrubbed_mse_mean"] <= 2 * sc["ideal_scrubbed_mse_mean"]
  assert sc["anti_scrubbed_mse_mean"] >= 0.8 * sc["ideal_anti_scrubbed_mse_mean"]
  assert sc["anti_scrubbed_mse_mean"] >= 2 * sc["scrubbed_mse_mean"]
  assert sc["scrubbed_over_topk_mean_ratio"] <= 4
  assert sc["anti_over_topk_mean_ratio"] >= anti_rise


@pytest.mark.slow
def test_apd_resid_mlp_1_layer(tmp_path):
  """§1.10 on the compressed-computation target with rank-1 components (measured:
  results/apd_resid_mlp.md)."""
  _assert_paper_picture(_decompose_resid_mlp(tmp_path, "1-layer-rank1"), distinct=95, mono=90,
                        anti_rise=8)


@pytest.mark.slow
def test_apd_resid_mlp_1_layer_full_rank(tmp_path):
  """The reference config (full rank, C = 130), 5k steps: anti-scrubbing raises the top-k MSE by
  an order of magnitude, scrubbing by much less (measured: results/apd_resid_mlp.md)."""
  s = _decompose_resid_mlp(tmp_path, "1-layer", "--config.optim.steps=5000")
  _assert_paper_picture(s, distinct=90, mono=80, anti_rise=10)
  assert s["scrubbing"]["scrubbed_over_topk_mean_ratio"] <= 3


@pytest.mark.slow
def test_apd_resid_mlp_2_layer(tmp_path):
  """§1.10 on the cross-layer target with rank-1 components: components span both layers
  (measured: results/apd_resid_mlp.md)."""
  _assert_paper_picture(_decompose_resid_mlp(tmp_path, "2-layer-rank1"), distinct=95, mono=90,
                        anti_rise=10)
