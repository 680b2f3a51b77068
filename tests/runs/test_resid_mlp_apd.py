"""The APD paper's ResidMLP analyses (`runs.resid_mlp_apd`, docs/methods/apd.md §1.9) against their
definitions and on a planted decomposition whose every figure is known."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from paramdecomp.core import lowrank, pytree
from paramdecomp.core.lowrank import Factors
from paramdecomp.methods import apd
from paramdecomp.runs import resid_mlp_apd
from paramdecomp.toy_models import resid_mlp


def _tiny(key, n_layers=1):
  cfg = resid_mlp.model_config(n_features=8, d_resid=12, n_layers=n_layers, d_mlp=5)
  return resid_mlp.init(key, cfg)


def _apd_cfg(C=4, **kw):
  c = apd.default_config()
  c.update(dict(decompose=(r"layers/\d+/W_(in|out)",), C=C, m=0, topk=1.0, **kw))
  return c


@pytest.mark.parametrize("n_layers", [1, 2])
def test_diag_relu_contribution_is_the_components_own_output(n_layers):
  """Output i of the model holding only component c's MLP weights on input e_i, minus the
  direct path (W_U W_E e_i)_i = 1, is the component's diagonal ReLU contribution (1 layer; with
  2 layers only the direct path of each layer is counted, so compare layer by layer)."""
  p = _tiny(jax.random.PRNGKey(0), n_layers)
  comps = apd.init(jax.random.PRNGKey(1), p, _apd_cfg())
  diag = resid_mlp_apd.diag_relu_contributions(p, comps)            # [C, n]
  mats = {q: lowrank.components(f) for q, f in comps.factors.items()}
  for c in range(4):
    for i in range(8):
      want = 0.0
      for layer in range(n_layers):
        only = {"W_E": p["W_E"], "layers": {"0": {
            w: mats[f"layers/{layer}/{w}"][c] for w in ("W_in", "W_out")}}}
        want += resid_mlp.apply(only, jax.nn.one_hot(i, 8)[None])[0, i] - 1.0
      np.testing.assert_allclose(diag[c, i], want, rtol=1e-9, atol=1e-12)


def test_one_component_equal_to_the_target_has_its_neuron_contributions():
  p = _tiny(jax.random.PRNGKey(2))
  comps = apd.State({q: Factors(w[None], jnp.eye(w.shape[1])[None])
                     for q, w in pytree.get(p, ["layers/0/W_in", "layers/0/W_out"]).items()})
  for i in range(8):
    np.testing.assert_allclose(resid_mlp_apd.component_contributions(p, comps, i)[0],
                               resid_mlp.neuron_contributions(p, i), rtol=1e-12)


def test_scrub_masks_spare_or_hit_the_responsible_components():
  c, n, n_ablate = 10, 6, 4
  best = jnp.array([0, 1, 2, 3, 3, 5])        # features 3 and 4 share component 3
  live = jnp.array([True] * 8 + [False] * 2)
  x = jnp.zeros((50, n)).at[:, 3].set(0.5).at[::2, 0].set(-0.2)
  scrub, anti = resid_mlp_apd.scrub_masks(jax.random.PRNGKey(3), best, live, x, n_ablate)
  resp = np.zeros((50, c), bool)
  resp[:, 3] = True
  resp[::2, 0] = True
  for keep in (scrub, anti):
    keep = np.asarray(keep) > 0
    assert np.all((~keep[:, :8]).sum(1) == n_ablate)   # always n_ablate live ones ablated
    assert not np.any(keep[:, 8:])                     # components never selected stay off
  assert np.all(np.asarray(scrub)[resp] == 1)          # scrubbed keeps every responsible one
  assert np.all(np.asarray(anti)[resp] == 0)           # anti-scrubbed removes them all
  assert len({tuple(r) for r in np.asarray(scrub)}) > 1  # the ablated set is random per sample


def test_ideal_decomposition_is_faithful_and_ablates_features_exactly():
  cfg = resid_mlp.model_config(n_features=6, d_resid=15, n_layers=2, d_mlp=4)
  p = resid_mlp.init(jax.random.PRNGKey(0), cfg)
  x = jax.random.uniform(jax.random.PRNGKey(1), (8, 6), minval=-1, maxval=1)
  # every component on is the target itself, also with two layers
  np.testing.assert_allclose(resid_mlp_apd.ideal_masked_apply(p, x, jnp.ones_like(x)),
                             resid_mlp.apply(p, x), rtol=1e-4, atol=1e-5)
  # one layer: the ablated features' components neither read their inputs nor write their
  # outputs, y = x W_E^T W_E + k * (ReLU((k x) W_E^T W_in^T) W_out^T W_E)
  p1 = {"W_E": p["W_E"], "layers": {"0": p["layers"]["0"]}}
  k = jax.random.bernoulli(jax.random.PRNGKey(2), 0.5, x.shape).astype(x.dtype)
  w_e, layer = p1["W_E"], p1["layers"]["0"]
  want = x @ w_e.T @ w_e + k * (jnp.maximum((k * x) @ w_e.T @ layer["W_in"].T, 0)
                                @ layer["W_out"].T @ w_e)
  np.testing.assert_allclose(resid_mlp_apd.ideal_masked_apply(p1, x, k), want, rtol=1e-4,
                             atol=1e-5)


def test_count_components():
  diag = np.array([[0.0, 0.0], [0.5, 0.0], [0.5, 0.3], [0.2, 0.2]])
  assert resid_mlp_apd.count_components(np.c_[diag, [0, 0, 0, 0.4]], 0.1) == {
      "dead": 1, "monosemantic": 1, "duosemantic": 1, "polysemantic": 1}


def test_decomposition_run_writes_the_analyses(tmp_path):
  """A short APD run on a small ResidMLP writes the §1.9 scalars and figures."""
  from paramdecomp.configs import apd_resid_mlp
  from paramdecomp.runs import decompose_apd as decomposition
  from paramdecomp.runs import targets as training

  t = training.default_config()
  t.model = resid_mlp.model_config(n_features=10, d_resid=20, n_layers=2, d_mlp=4)
  t.data.update(dict(p=0.1, lo=-1.0, hi=1.0, batch_size=64))
  t.optim.steps, t.run.log_every, t.run.steps_per_dispatch = 100, 0, 100
  training.train_target(t, str(tmp_path / "target"))
  c = apd_resid_mlp.get_config("2-layer")
  c.apd.C, c.target_dir, c.batch_size = 12, str(tmp_path / "target"), 64
  c.optim.steps, c.run.steps_per_dispatch, c.run.log_every = 20, 20, 0
  c.analysis.update(dict(n_samples=256, batch_size=64))
  s = decomposition.decompose(c, str(tmp_path / "apd"))
  assert np.isfinite(s["act_recon"]) and s["act_recon"] > 0
  # the values are known on a planted decomposition (test_planted_decomposition_analyses); here
  # the run must write every section
  assert {"target", "features", "component_counts", "one_hot", "scrubbing"} <= set(s)
  assert "component_off_main_layer_share_median" in s["features"]   # two layers
  assert s["scrubbing"]["n_ablated"] == s["features"]["distinct_best_components"] // 2
  ideal = s["scrubbing"]
  assert 0 < ideal["ideal_scrubbed_mse_mean"] < ideal["ideal_anti_scrubbed_mse_mean"]
  assert s["one_hot"]["n_samples"] == 256
  for f in s["figures"]:
    assert os.path.getsize(f) > 1000


# one neuron per feature (W_E = W_in = W_out = I, so f(x) = x + ReLU(x) is its own label); the
# components own sets of those neurons: four monosemantic, one duo-, one polysemantic, four dead
PLANTED_SETS = ([0], [1], [2], [3], [4, 5], [6, 7, 8], [], [], [], [])


def _planted():
  n = 9
  eye = jnp.eye(n)
  params = {"W_E": eye, "layers": {"0": {"W_in": eye, "W_out": eye}}}
  m = max(len(s) for s in PLANTED_SETS)
  cols = jnp.stack([jnp.stack([eye[j] for j in s] + [jnp.zeros(n)] * (m - len(s)), axis=1)
                    for s in PLANTED_SETS])                          # [C, n, m]: e_j per neuron
  # component c's part of W_in and W_out is the diagonal of its neurons, sum_j e_j e_j^T
  state = apd.State({"layers/0/W_in": Factors(cols, cols), "layers/0/W_out": Factors(cols, cols)})
  cfg = apd.default_config()
  cfg.update(dict(decompose=(r"layers/\d+/W_(in|out)",), C=len(PLANTED_SETS), m=m, topk=2.0))
  tcfg = ml_collections.ConfigDict(dict(data=dict(p=0.2, lo=-1.0, hi=1.0)))
  return params, state, cfg, tcfg


def test_planted_decomposition_analyses():
  """Components that sum to the target exactly, each owning its features' neurons: the responsible
  component of each feature is its owner, alone in its attributions, with the target's neuron
  contributions; the counts are those planted; one-hot and top-k passes are exact; scrubbing
  (sparing the responsible components) costs nothing, and anti-scrubbing costs exactly what the
  ideal per-feature decomposition's does (both remove ReLU(x_j) from each hit active output)."""
  params, state, cfg, tcfg = _planted()
  s = resid_mlp_apd.analyse(params, state, cfg, tcfg, jax.random.PRNGKey(0), "", n_samples=512,
                            batch_size=64, draw=False)
  assert s["target"]["mse"] == 0.0 and s["target"]["response_at_1_mean"] == 2.0
  assert s["features"] == {
      "distinct_best_components": 6, "single_dominant_fraction": 1.0,
      "second_to_first_attribution_median": 0.0, "neuron_contribution_cosine_median": 1.0,
      "neuron_contribution_cosine_ge_0.9_fraction": 1.0, "features_sharing_a_best_component": 3}
  assert s["component_counts"] == {"dead": 4, "monosemantic": 4, "duosemantic": 1,
                                   "polysemantic": 1, "cutoff": 0.1}
  oh = s["one_hot"]
  assert oh["n_samples"] == 512 and oh["mse_top1_mean"] == 0.0 and oh["mse_batch_topk_mean"] == 0.0
  sc = s["scrubbing"]
  assert sc["n_ablated"] == 3
  assert sc["scrubbed_mse_mean"] == 0.0 and sc["ideal_scrubbed_mse_mean"] == 0.0
  assert sc["topk_mse_mean"] == 0.0
  assert sc["anti_scrubbed_mse_mean"] > 0.01
  np.testing.assert_allclose(sc["anti_scrubbed_mse_mean"], sc["ideal_anti_scrubbed_mse_mean"],
                             rtol=1e-6)
  np.testing.assert_allclose(sc["anti_scrubbed_mse_mean_positive"],
                             sc["anti_scrubbed_mse_mean"] / sc["positive_input_fraction"],
                             rtol=1e-5)  # samples without a positive feature lose nothing


def test_off_main_layer_shares_on_planted_contributions():
  """Two layers of 2 and 3 neurons: a contribution split evenly between them is half off its main
  layer, one inside a single layer none of it."""
  params = {"layers": {"0": {"W_in": jnp.zeros((2, 4))}, "1": {"W_in": jnp.zeros((3, 4))}}}
  even = np.array([[1.0, 1.0, 2.0, 0.0, 0.0]] * 3)
  inside = np.array([[0.0, 0.0, 1.0, -1.0, 0.0]] * 3)
  assert resid_mlp_apd.off_main_layer_shares(params, even, inside) == {
      "target_off_main_layer_share_median": 0.5, "component_off_main_layer_share_median": 0.0}
