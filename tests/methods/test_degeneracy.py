"""Degeneracy measures and the modularity metric (docs/methods/oracles.md §6.5), in float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paramdecomp.methods import degeneracy, lib
from paramdecomp.core import sequential


def test_hessian_rank_of_a_two_layer_linear_net():
  """W_1 block of the Gauss-Newton Hessian has rank r_x · rank(W_2) (jax.hessian cross-check)."""
  rng = np.random.default_rng(0)
  d_in, d_h, d_out, r_x = 5, 4, 3, 2
  x = rng.normal(size=(40, r_x)) @ rng.normal(size=(r_x, d_in))
  w2 = rng.normal(size=(d_out, 2)) @ rng.normal(size=(2, d_h))           # rank 2
  params = {"W1": rng.normal(size=(d_h, d_in))}
  apply = lambda p, x: x @ p["W1"].T @ w2.T  # noqa: E731
  res = degeneracy.effective_parameters(apply, params, x, eps=1e-9)
  assert res["rank"] == r_x * 2
  assert res["n_free"] == d_h * d_in - r_x * 2
  # the Gauss-Newton matrix is the exact Hessian of the behavioural loss at θ*
  y0 = apply(params, x)
  lb = lambda w: jnp.mean(jnp.sum((x @ w.reshape(d_h, d_in).T @ w2.T - y0) ** 2, -1))  # noqa
  h = jax.hessian(lb)(params["W1"].ravel())
  np.testing.assert_allclose(degeneracy.gauss_newton_hessian(apply, params, x), h, atol=1e-10)


def test_activation_and_jacobian_degeneracy():
  rng = np.random.default_rng(1)
  k, d = 3, 6
  x = rng.normal(size=(200, k)) @ rng.normal(size=(k, d))
  w1 = rng.normal(size=(d, 5))
  w2 = rng.normal(size=(5, 2)) @ rng.normal(size=(2, 4))   # the output sees a 2-d image of f^1
  ps = {"w1": w1, "w2": w2}
  seq = sequential.from_functions([lambda p, f: f @ p["w1"], lambda p, f: f @ p["w2"]],
                                  ["a", "b", "out"])
  mu, second = lib.node_moments(seq, ps, x, lib.default_config())[0]
  ev = np.linalg.eigvalsh(second[:-1, :-1])
  assert degeneracy.rank_deficiency(ev, 1e-9, relative=True) == d - k
  kmat = degeneracy.jacobian_gram(seq, ps, x, 1)
  assert kmat.shape == (5, 5)
  assert degeneracy.rank_deficiency(np.linalg.eigvalsh(kmat), 1e-9, relative=True) == 5 - 2
  # a change of W^1 inside ker K leaves the output unchanged (here exactly: linear)
  _, vecs = np.linalg.eigh(kmat)
  p_ker = vecs[:, :3] @ vecs[:, :3].T
  ps2 = dict(ps, w1=w1 + rng.normal(size=(d, 5)) @ p_ker)
  np.testing.assert_allclose(sequential.apply(seq, ps2, x), sequential.apply(seq, ps, x),
                             atol=1e-9)


def test_synchronised_relus_are_grouped_and_reparametrisable():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(300, 4))
  w_in = rng.normal(size=(4, 5))
  w_in[:, 3] = 2.5 * w_in[:, 0]               # neuron 3 = positively scaled copy of neuron 0
  w_in[:, 4] = 0.0                            # neuron 4 never fires (bias -1)
  b = np.zeros(5)
  b[4] = -1.0
  pre = x @ w_in + b
  res = degeneracy.firing_groups(pre)
  assert res["groups"] == [[0, 3]] and res["dead"] == [4] and res["extra_free"] == 2
  # A = [[1, e], [0, 1]] on the pair, A^-1 in the next layer: outputs preserved on the data
  w_out = rng.normal(size=(5, 2))
  eps = 1e-3
  a = np.eye(5)
  a[0, 3] = eps
  ok = np.all(np.sign(pre[:, 0]) == np.sign(pre @ a)[:, 0])   # margins beat the mixing
  assert ok
  out = np.maximum(pre, 0) @ w_out
  out2 = np.maximum(pre @ a, 0) @ np.linalg.inv(a) @ w_out
  np.testing.assert_allclose(out, out2, atol=1e-10)
  assert degeneracy.firing_groups(pre, hamming=300)["groups"] == [[0, 1, 2, 3]]


def test_two_disconnected_cliques_have_modularity_one_half():
  w = np.zeros((8, 8))
  w[:4, :4] = 1.0
  w[4:, 4:] = 1.0
  np.fill_diagonal(w, 0)
  res = degeneracy.leiden_modularity(w, resolution=1.0, seed=0)
  assert res["n_clusters"] == 2
  assert res["Q"] == pytest.approx(0.5, abs=1e-12)
  assert len(set(res["labels"][:4])) == 1 and res["labels"][0] != res["labels"][4]


def test_graph_modularity_of_block_diagonal_edges():
  blocks = np.kron(np.eye(2), np.ones((3, 3)))
  e = np.zeros((7, 7))                   # constant feature first on both sides
  e[1:, 1:] = 10.0 * blocks + 1e-12
  e[0, 0] = 5.0
  w, layer = degeneracy.edge_graph_weights([e], [1, 1])
  # eps defaults to the weakest edge (1e-12): block edges weigh log10(10 / 1e-12 + 1) ≈ 13, the
  # others log10(1) = 0; the constant feature is dropped; inputs are nodes 0-5, outputs 6-11
  want = np.zeros((12, 12))
  want[6:, :6] = np.log10(10.0 / 1e-12 + 1) * blocks
  np.testing.assert_allclose(w, want + want.T, rtol=1e-12)
  assert layer.tolist() == [0] * 6 + [1] * 6
  res = degeneracy.graph_modularity([e], [1, 1])
  assert res["n_clusters"] == 2 and res["Q"] == pytest.approx(0.5, abs=1e-9)
