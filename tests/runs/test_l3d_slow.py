"""The issue's L3D toy targets (docs/methods/l3d.md §3.7), full runs:
`pytest -m slow tests/runs/test_l3d_slow.py` (durations: results/test_suite.md).

Targets not reached by the current code are strict xfails with the measured value in the reason
(the measurements: results/l3d_toys.md), so that the suite reports them rather than hides them:
an xpass fails the suite, since the gap closed (lift the mark and record the new figure). TM1 and
TM2 also run with the decomposition data's all-zero rows kept (`zero_rows=keep`).
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "paramdecomp", "configs")
# the first target seeds whose TM1 represents all 5 features and whose TM4 computes all 5
# (results/l3d_toys.md)
SEEDS = {"tm1": 3, "tm2": 0, "tm3": 0, "tm3-code": 0, "tm4": 1, "tm4-code": 0}


def _target(tmp_path_factory, variant):
  d = tmp_path_factory.mktemp(variant)
  subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train_toy.py"),
                  f"--config={os.path.join(CONFIGS, 'l3d_toys.py')}:{variant}",
                  f"--config.seed={SEEDS[variant]}", f"--workdir={d / 'target'}"],
                 check=True, cwd=ROOT, capture_output=True)
  return d / "target"


def _decompose(tmp_path_factory, variant, target, extra):
  d = tmp_path_factory.mktemp(variant + "_dec")
  subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "decompose_l3d.py"),
                  f"--config={os.path.join(CONFIGS, 'l3d_decompose.py')}:{variant}",
                  f"--config.target_dir={target}", f"--workdir={d}", *extra],
                 check=True, cwd=ROOT, capture_output=True)
  with open(d / "summary.json") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """runs(variant, *extra_decomposition_flags) -> summary; one target per variant."""
  targets, cache = {}, {}

  def get(variant, *extra):
    toy = variant.removesuffix("-const")  # the same target for the constant-reference variants
    if toy not in targets:
      targets[toy] = _target(tmp_path_factory, toy)
    if (variant, extra) not in cache:
      cache[(variant, extra)] = _decompose(tmp_path_factory, variant, targets[toy], extra)
    return cache[(variant, extra)]

  return get


KEEP = "--config.zero_rows=keep"


@pytest.mark.slow
def test_tm1_features_matched_by_parallel_subnetworks(runs):
  s = runs("tm1")
  assert s["tms"]["distinct_matches"] == 5
  assert min(s["tms"]["cos_dec"]) >= 0.95 and min(s["tms"]["cos_enc"]) >= 0.95


@pytest.mark.slow
@pytest.mark.xfail(reason="measured 0.200 held-out / 0.214 training (paper 0.19; issue asks "
                   "<= 0.12); unreachable with this data, see the bound test", strict=True)
def test_tm1_reconstruction(runs):
  assert runs("tm1")["recon_heldout"] <= 0.12


@pytest.mark.slow
def test_tm1_and_tm2_issue_targets_are_below_the_bound_of_the_specified_object(runs):
  """With L3D's generator (all-zero rows rejected, §0.3) no n_v directions, whatever their
  coefficients and without top-k, reach the issue's reconstruction targets (the bounds and the
  trained losses: results/l3d_toys.md; why: docs/notes/l3d_tm1_tm2_bounds.md)."""
  for variant, target in (("tm1", 0.12), ("tm2", 0.065)):
    s = runs(variant)
    assert s["recon_bound_heldout"] > target
    assert s["recon_bound_heldout"] <= s["recon_heldout_pooled"] + 1e-6


@pytest.mark.slow
def test_tm1_with_zero_rows_kept(runs):
  """Plain p = 0.05 sparsity (most references are then f(0)); measured: results/l3d_toys.md."""
  s = runs("tm1", KEEP)
  assert s["recon_heldout"] <= 0.12
  assert s["tms"]["distinct_matches"] == 5
  assert min(s["tms"]["cos_dec"]) >= 0.95 and min(s["tms"]["cos_enc"]) >= 0.95


@pytest.mark.slow
@pytest.mark.xfail(reason="measured recon 0.244 (bound 0.217), coefficient correlation 0.880",
                   strict=True)
def test_tm2_reconstruction_and_coefficient_recovery(runs):
  s = runs("tm2")
  assert s["recon_heldout"] <= 0.065 and s["coef_corr"] >= 0.9


@pytest.mark.slow
def test_tm2_coefficient_recovery_with_zero_rows_kept(runs):
  """The paper's correlation bar with zero rows kept (measured: results/l3d_toys.md)."""
  assert runs("tm2", KEEP)["coef_corr"] >= 0.9


@pytest.mark.slow
@pytest.mark.xfail(reason="measured recon 0.136 held-out with zero rows kept, whose bound is "
                   "0.122 (> 0.065)", strict=True)
def test_tm2_reconstruction_with_zero_rows_kept(runs):
  assert runs("tm2", KEEP)["recon_heldout"] <= 0.065


@pytest.mark.slow
@pytest.mark.xfail(reason="measured 7 live subnetworks for 5 groups (groups 0 and 1 split in two; "
                   "decomposition seeds 1, 2: 8 and 6 live): each group's gradients hold a second "
                   "direction (the reference's part) and top-k 0.1 x 10 subnetworks leaves a "
                   "coefficient per sample to spend on it; README", strict=True)
def test_tm3_one_live_subnetwork_per_group(runs):
  g = runs("tm3")["groups"]
  assert g["one_live_per_group"]


@pytest.mark.slow
def test_tm3_with_eight_subnetworks_one_live_subnetwork_per_group(runs):
  """The reference code's n_v = 8 on the paper's 25-10-25 target (0.8 coefficients per sample;
  measured over seeds: results/l3d_toys.md, docs/notes/l3d_tm3_extra_subnetworks.md)."""
  s = runs("tm3", "--config.l3d.n_subnets=8")
  assert s["groups"]["one_live_per_group"] and s["dead"] == 3


@pytest.mark.slow
def test_tm3_reference_code_variant_one_live_subnetwork_per_group(runs):
  """30-10-30, six groups, 8 rank-2 subnetworks (0.8 coefficients per sample): one live
  subnetwork per group and the 2 spares dead (measured over seeds: results/l3d_toys.md)."""
  s = runs("tm3-code")
  assert s["groups"]["one_live_per_group"] and s["dead"] == 2


# The constant all-zeros reference (§3.1's first candidate, `l3d_decompose.py:<toy>-const`)
# instead of another sample's output: the issue's TM1-TM3 figures (results/l3d_toys.md,
# docs/notes/l3d_reference_output.md).


@pytest.mark.slow
def test_tm1_with_the_constant_reference(runs):
  """The issue's TM1 bar with the constant reference (measured over seeds: results/l3d_toys.md)."""
  s = runs("tm1-const")
  assert s["recon_heldout"] <= 0.12
  assert s["tms"]["distinct_matches"] == 5
  assert min(s["tms"]["cos_dec"]) >= 0.95 and min(s["tms"]["cos_enc"]) >= 0.95


@pytest.mark.slow
def test_tm2_with_the_constant_reference(runs):
  """The issue's TM2 bars with the constant reference, every subnetwork live (measured over
  seeds: results/l3d_toys.md)."""
  s = runs("tm2-const")
  assert s["recon_heldout"] <= 0.065 and s["coef_corr"] >= 0.9
  assert s["dead"] == 0


@pytest.mark.slow
def test_tm3_with_the_constant_reference_one_live_subnetwork_per_group(runs):
  """The paper's 10 rank-3 subnetworks: one live per group and 5 dead (measured over seeds:
  results/l3d_toys.md)."""
  s = runs("tm3-const")
  assert s["groups"]["one_live_per_group"] and s["dead"] == 5


@pytest.mark.slow
def test_tm4_reconstruction(runs):
  assert runs("tm4")["recon_heldout"] <= 0.35


@pytest.mark.slow
@pytest.mark.xfail(reason="measured specificity 1.0-1.4 per subnetwork; the subnetworks serve "
                   "features [1, 4, 1, 0, 0]; unreachable on this target, see the next test",
                   strict=True)
def test_tm4_perturbation_specificity(runs):
  s = runs("tm4")
  assert sorted(s["feature_of_subnet"]) == list(range(5))
  assert min(s["specificity"]) >= 10


@pytest.mark.slow
def test_tm4_specificity_target_is_above_what_one_direction_per_feature_gives(runs):
  """Even each feature's own best direction (the top singular direction of its per-sample
  gradients) moves the other samples' outputs almost as much: most of a feature's gradient energy
  is on parameters every feature uses, so no L3D subnetwork tracing one feature reaches 10
  (measured: results/l3d_toys.md; docs/notes/l3d_tm4_specificity.md)."""
  s = runs("tm4")
  assert max(s["feature_direction_specificity"]) < 10
  assert max(s["feature_private_share"]) < 0.5
