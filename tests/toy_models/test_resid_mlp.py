"""Residual MLP toy models against their definitions and the oracles of docs/methods/oracles.md §6.1 (the
APD analyses of a decomposed ResidMLP: tests/runs/test_resid_mlp_apd.py)."""
import jax
import jax.numpy as jnp
import numpy as np

from paramdecomp.toy_models import data, resid_mlp


def _one_hot_embedding_params(n, d_mlp, key):
  """W_E = I (d_resid = n) and random MLP weights."""
  k1, k2 = jax.random.split(key)
  return {"W_E": jnp.eye(n), "layers": {"0": {"W_in": jax.random.normal(k1, (d_mlp, n)),
                                              "W_out": jax.random.normal(k2, (n, d_mlp))}}}


def test_forward_is_the_definition():
  cfg = resid_mlp.model_config(n_features=6, d_resid=9, n_layers=2, d_mlp=3)
  p = resid_mlp.init(jax.random.PRNGKey(0), cfg)
  np.testing.assert_allclose(jnp.linalg.norm(p["W_E"], axis=0), 1.0, rtol=1e-6)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 6))
  r = x @ p["W_E"].T
  for i in ("0", "1"):
    r = r + jnp.maximum(r @ p["layers"][i]["W_in"].T, 0) @ p["layers"][i]["W_out"].T
  np.testing.assert_allclose(resid_mlp.apply(p, x), r @ p["W_E"], rtol=1e-5, atol=1e-6)


def test_neuron_contributions_with_one_hot_embedding():
  p = _one_hot_embedding_params(7, 4, jax.random.PRNGKey(2))
  for i in range(7):
    want = p["layers"]["0"]["W_out"][i, :] * p["layers"]["0"]["W_in"][:, i]
    np.testing.assert_allclose(resid_mlp.neuron_contributions(p, i), want, rtol=1e-12)


def test_monosemantic_baseline_matches_monte_carlo():
  n, d_mlp, prob = 20, 8, 0.05
  eye = jnp.eye(n)
  p = {"W_E": eye, "layers": {"0": {"W_in": eye[:d_mlp], "W_out": eye[:, :d_mlp]}}}
  x = data.sparse_features(jax.random.PRNGKey(3), 400_000, n, prob, -1.0, 1.0,
                           dtype=jnp.float64)
  err = np.asarray(jnp.mean((resid_mlp.apply(p, x) - resid_mlp.label(x)) ** 2, axis=1))
  se = err.std() / np.sqrt(err.size)
  assert abs(err.mean() - resid_mlp.monosemantic_mse(n, d_mlp, prob)) < 3 * se


def test_response_curve_reads_one_output():
  p = _one_hot_embedding_params(5, 5, jax.random.PRNGKey(4))
  v = jnp.linspace(0.0, 1.0, 11)
  want = jnp.stack([resid_mlp.apply(p, vi * jnp.eye(5)[2][None])[0, 2] for vi in v])
  np.testing.assert_allclose(resid_mlp.response(p, 2, v), want, rtol=1e-10)
