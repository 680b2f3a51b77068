"""LIB and interaction-basis oracles (docs/methods/oracles.md §6.5-6.6), in float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paramdecomp.core import metrics, scan, sequential
from paramdecomp.methods import ablations, degeneracy, lib
from paramdecomp.core.config import ConfigError


def _absolute(tau):
  cfg = lib.default_config()
  cfg.truncation, cfg.truncation_threshold = "absolute", tau
  return cfg


def _chain(dims, seed=0):
  """A linear chain f -> f A_0 -> f A_0 A_1 ... (no biases), its params and data."""
  rng = np.random.default_rng(seed)
  ps = {f"A{k}": rng.normal(size=(dims[k], dims[k + 1])) for k in range(len(dims) - 1)}
  layers = [(lambda k: lambda p, f: f @ p[f"A{k}"])(k) for k in range(len(dims) - 1)]
  seq = sequential.from_functions(layers, [f"n{k}" for k in range(len(dims))])
  x = rng.normal(size=(400, dims[0])) @ rng.normal(size=(dims[0], dims[0]))
  return seq, ps, x


def _cfg(**kw):
  c = lib.default_config()
  c.update(dict(center=False, truncation_threshold=1e-9, chunk_size=64))
  c.update(kw)
  return c


def _hat(seq, ps, x, bases, l):
  return np.asarray(lib.node_acts(seq, ps, x, l))[:, 0] @ bases[l].C


def _section_matrix(ps, k, last):
  """The augmented linear section of layer k as a matrix (row convention)."""
  a = ps[f"A{k}"]
  out = np.zeros((a.shape[0] + 1, a.shape[1] + (0 if last else 1)))
  out[:-1, :a.shape[1]] = a
  if not last:
    out[-1, -1] = 1.0
  return out


def test_linear_section_moment_is_a_a_transpose():
  seq, ps, x = _chain([6, 4])
  m, lam = lib.jacobian_moments(seq, ps, x, 0, np.eye(4), _cfg())
  want = np.zeros((7, 7))
  want[:6, :6] = ps["A0"] @ ps["A0"].T
  np.testing.assert_allclose(m, want, atol=1e-10)
  assert lam is None


def test_linear_chain_basis_oracles():
  """E[f̂ᵀ f̂] = Λ, C⁺C = I, orthonormal Jacobian columns, edge row sums = Λ (§6.6)."""
  seq, ps, x = _chain([6, 5, 4])
  cfg = _cfg()
  bases = lib.build_bases(seq, ps, x, cfg)
  edges = lib.build_edges(seq, ps, x, bases, cfg)
  for l in range(2):
    b = bases[l]
    fh = _hat(seq, ps, x, bases, l)
    np.testing.assert_allclose(fh.T @ fh / len(x), np.diag(b.Lambda), atol=1e-8 * b.Lambda.max())
    np.testing.assert_allclose(b.C_pinv @ b.C, np.eye(b.C.shape[1]), atol=1e-9)
    jac = b.C_pinv @ _section_matrix(ps, l, l == 1) @ bases[l + 1].C
    np.testing.assert_allclose(jac @ jac.T, np.eye(jac.shape[0]), atol=1e-9)
    np.testing.assert_allclose(edges[l].sum(0), b.Lambda, rtol=1e-9)


def test_interaction_basis_of_a_linear_chain_is_a_signed_permutation():
  seq, ps, x = _chain([6, 5, 4, 3])
  bases = lib.build_bases(seq, ps, x, _cfg(rotate_final=True))
  for l in range(3):
    jac = bases[l].C_pinv @ _section_matrix(ps, l, l == 2) @ bases[l + 1].C
    a = np.abs(jac)
    assert np.all((a < 1e-7) | (np.abs(a - 1) < 1e-7)), np.round(jac, 4)
    assert np.all(a.round().sum(0) <= 1) and np.all(a.round().sum(1) <= 1)
    assert a.round().sum() == min(jac.shape)


def test_jacobian_to_the_output_agrees_with_next_layer_on_a_linear_chain():
  seq, ps, x = _chain([6, 5, 4, 3])
  nxt = lib.build_bases(seq, ps, x, _cfg(rotate_final=True))
  out = lib.build_bases(seq, ps, x, _cfg(rotate_final=True, jacobian_target="output"))
  for a, b in zip(nxt, out):
    np.testing.assert_allclose(a.Lambda, b.Lambda, rtol=1e-8)
    np.testing.assert_allclose(np.abs(a.C), np.abs(b.C), atol=1e-7)


def test_basis_is_invariant_to_a_compensated_mixing():
  seq, ps, x = _chain([6, 5, 4], seed=1)
  mix = np.random.default_rng(2).normal(size=(5, 5)) + 3 * np.eye(5)
  ps2 = {"A0": ps["A0"] @ mix, "A1": np.linalg.inv(mix) @ ps["A1"]}
  cfg = _cfg()
  b1, b2 = lib.build_bases(seq, ps, x, cfg), lib.build_bases(seq, ps2, x, cfg)
  h1, h2 = _hat(seq, ps, x, b1, 1), _hat(seq, ps2, x, b2, 1)
  np.testing.assert_allclose(np.abs(h1), np.abs(h2), rtol=1e-6, atol=1e-8)


def test_truncation_keeps_exactly_the_non_null_space():
  rng = np.random.default_rng(3)
  seq, ps, _ = _chain([7, 6, 5], seed=3)
  k = 3
  basis = rng.normal(size=(k, 7))
  x = rng.normal(size=(300, k)) @ basis                       # activations in a k-dim subspace
  cfg = _cfg(center=True, truncation_threshold=1e-10)
  b1 = lib.build_bases(seq, ps, x, cfg)
  assert b1[0].C.shape[1] == k + 1                            # k features and the constant
  assert degeneracy.rank_deficiency(b1[0].gram_eigenvalues, 1e-10) == 8 - (k + 1)
  # adding B P_ker(G) to the next weight changes neither the outputs nor C
  q, _ = np.linalg.qr(basis.T, mode="complete")
  p_ker = q[:, k:] @ q[:, k:].T
  ps2 = dict(ps, A0=ps["A0"] + p_ker @ rng.normal(size=(7, 6)))
  np.testing.assert_allclose(x @ ps2["A0"], x @ ps["A0"], atol=1e-9)
  b2 = lib.build_bases(seq, ps2, x, cfg)
  np.testing.assert_allclose(np.abs(b1[0].C), np.abs(b2[0].C), atol=1e-7)


def test_moments_match_numpy_and_centred_gram_has_the_constant_direction():
  seq, ps, x = _chain([5, 3])
  x = x + 2.0
  (mu, second), out = lib.node_moments(seq, ps, x, _cfg(chunk_size=37))  # 400 = 10 chunks + 30
  fa = np.c_[x, np.ones(len(x))]
  np.testing.assert_allclose(mu, fa.mean(0), rtol=1e-12)
  np.testing.assert_allclose(second, fa.T @ fa / len(x), rtol=1e-12)
  h = x @ ps["A0"]                                   # the output node: no constant coordinate
  np.testing.assert_allclose(out[0], h.mean(0), rtol=1e-10)
  np.testing.assert_allclose(out[1], h.T @ h / len(x), rtol=1e-10)
  d, u, w, w_pinv, n_const, _ = lib.gram_eigenbasis(mu, second, True, True, _absolute(1e-12))
  assert n_const == 1
  np.testing.assert_allclose(np.abs(u[:, 0]), np.eye(6)[-1], atol=1e-12)
  assert abs(d[0] - 1.0) < 1e-12
  np.testing.assert_allclose(w_pinv @ w, np.eye(len(d)), atol=1e-10)


def test_gram_over_positions_averages_every_position():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(50, 3, 4))
  seq = sequential.from_functions([lambda p, f: f.sum(-2)], ["seq", "out"])
  assert lib.view_of(seq, {}, x[0]).td == ((3, 4), (1, 4))
  mu, second = lib.node_moments(seq, {}, x, _cfg())[0]
  fa = np.c_[x.reshape(-1, 4), np.ones(150)]
  np.testing.assert_allclose(second, fa.T @ fa / 150, rtol=1e-12)


def test_dataset_sums_compile_once_per_shape():
  """New params, bases and masks of the same shapes reuse the compiled scans (the Gram pass
  used to compile afresh on every call)."""
  seq, ps, x, y = _mlp()
  cfg = _cfg(center=True)
  bases = lib.build_bases(seq, ps, x, cfg)
  e = lib.build_edges(seq, ps, x, bases, cfg)
  ablations.edge_ablation_scores(seq, ps, x, y, 1, bases[1], bases[2], np.ones(e[1].shape),
                                 metrics.classification)
  ablations.node_ablation_curve(seq, ps, x, y, 1, bases[1], metrics.classification, [0, 3])
  compiled = scan._scan_sum._cache_size()
  ps2 = jax.tree.map(lambda a: 1.1 * a, ps)
  bases2 = lib.build_bases(seq, ps2, x, cfg)
  assert [b.C.shape for b in bases2] == [b.C.shape for b in bases]
  lib.build_edges(seq, ps2, x, bases2, cfg)
  ablations.edge_ablation_scores(seq, ps2, x, y, 1, bases2[1], bases2[2],
                                 ablations.edge_mask(e[1], 4, 1), metrics.classification)
  ablations.node_ablation_curve(seq, ps2, x, y, 1, bases2[1], metrics.classification, [1, 5])
  assert scan._scan_sum._cache_size() == compiled


def test_integration_rules():
  a, w = lib.integration_points("gradient")
  assert a.tolist() == [1.0] and w.tolist() == [1.0]
  # ∫_0^1 α^k dα = 1/(k+1): Gauss-Legendre on n+1 points is exact to degree 2n+1, the
  # trapezoidal rule (ends pulled in by 1e-3/(n+1)) within O(1/n²)
  a, w = lib.integration_points("gauss-legendre", 2)
  for k in range(6):
    assert w @ a ** k == pytest.approx(1 / (k + 1), rel=1e-13)
  assert w @ a ** 6 != pytest.approx(1 / 7, rel=1e-6)
  a, w = lib.integration_points("trapezoidal", 20)
  for k in range(4):
    assert w @ a ** k == pytest.approx(1 / (k + 1), abs=3e-3)
  # ∫_0^1 d/df (alpha f)^2 dalpha = f: the integrated Jacobian of an elementwise square
  seq = sequential.from_functions([lambda p, f: f * f], ["in", "out"])
  x = np.random.default_rng(0).normal(size=(64, 3))
  want = np.zeros((4, 4))
  want[:3, :3] = np.diag((x ** 2).mean(0))
  m, _ = lib.jacobian_moments(seq, {}, x, 0, np.eye(3),
                              _cfg(integration="gauss-legendre", n_intervals=2))
  np.testing.assert_allclose(m, want, atol=1e-12)
  m, _ = lib.jacobian_moments(seq, {}, x, 0, np.eye(3),
                              _cfg(integration="trapezoidal", n_intervals=20))
  np.testing.assert_allclose(m, want, rtol=2e-3, atol=1e-6)


def test_stochastic_sources():
  seq, ps, x = _chain([5, 4])
  exact, _ = lib.jacobian_moments(seq, ps, x, 0, np.eye(4), _cfg())
  # one output position: random signs over positions are exact
  pos, _ = lib.jacobian_moments(seq, ps, x, 0, np.eye(4), _cfg(stochastic_sources_pos=3))
  np.testing.assert_allclose(pos, exact, rtol=1e-10, atol=1e-10)
  est, _ = lib.jacobian_moments(seq, ps, x, 0, np.eye(4), _cfg(stochastic_sources=400))
  assert np.abs(est - exact).max() < 0.25 * np.abs(exact).max()
  assert not np.allclose(est, exact)


@pytest.mark.parametrize("formula", ["(1-0)*alpha", "(1-alpha)^2"])
def test_g_formulas_on_a_linear_section(formula):
  seq, ps, x = _chain([5, 3])
  a = ps["A0"]
  cfg = _cfg(formula=formula, integration="gauss-legendre", n_intervals=2)
  m, lam = lib.jacobian_moments(seq, ps, x, 0, np.eye(3), cfg)
  g = x @ a @ a.T          # g(f) = A Aᵀ f for F(f) = f A: ∫2(1-α) = ∫1 = 1
  g = np.c_[g, np.zeros(len(x))]
  fa = np.c_[x, np.ones(len(x))]
  np.testing.assert_allclose(m, g.T @ g / len(x), rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(lam, g.T @ fa / len(x), rtol=1e-10, atol=1e-10)
  bases = lib.build_bases(seq, ps, x, cfg)
  assert np.all(np.isfinite(bases[0].C)) and bases[0].C.shape[1] == 3


def test_positions_moments_edges_and_position_sources():
  """A per-position linear section [T, d0] -> [T, d1]: M' = A Aᵀ, random signs over positions
  are exact (φ_t² = 1), and edge row sums equal Λ with T = 3 positions."""
  rng = np.random.default_rng(4)
  ps = {"A": rng.normal(size=(5, 4)), "B": rng.normal(size=(4, 2))}
  seq = sequential.from_functions([lambda p, f: f @ p["A"], lambda p, f: f.sum(-2) @ p["B"]],
                                  ["seq0", "seq1", "out"])
  x = rng.normal(size=(120, 3, 5))
  m, _ = lib.jacobian_moments(seq, ps, x, 0, np.eye(5), _cfg())
  np.testing.assert_allclose(m[:5, :5], ps["A"] @ ps["A"].T, rtol=1e-10)
  m_pos, _ = lib.jacobian_moments(seq, ps, x, 0, np.eye(5), _cfg(stochastic_sources_pos=2))
  # (the constant coordinate, shared by all positions, is not per-position: compare features)
  np.testing.assert_allclose(m_pos[:5, :5], m[:5, :5], rtol=1e-10, atol=1e-12)
  cfg = _cfg()
  bases = lib.build_bases(seq, ps, x, cfg)
  e = lib.build_edges(seq, ps, x, bases, cfg)[0]
  np.testing.assert_allclose(e.sum(0), bases[0].Lambda, rtol=1e-9)


def _mlp(seed=0, dims=(5, 8, 6, 3), n=300):
  rng = np.random.default_rng(seed)
  ps = {f"l{k}": {"w": rng.normal(size=(dims[k], dims[k + 1])) / np.sqrt(dims[k]),
                  "bias": rng.normal(size=dims[k + 1]) * 0.3} for k in range(len(dims) - 1)}
  last = len(dims) - 2

  def layer(k):
    def fn(p, f):
      y = f @ p[f"l{k}"]["w"] + p[f"l{k}"]["bias"]
      return y if k == last else jax.nn.relu(y)
    return fn
  seq = sequential.from_functions([layer(k) for k in range(len(dims) - 1)],
                                  [f"n{k}" for k in range(len(dims))])
  x = rng.normal(size=(n, dims[0]))
  y = np.array(jnp.argmax(sequential.apply(seq, ps, x), -1))
  y[:n // 10] = (y[:n // 10] + 1) % dims[-1]   # some errors, so losses are not trivial
  return seq, ps, x, y


def test_bias_folding_scales_every_bias():
  seq, ps, x, _ = _mlp()
  f = jnp.asarray(x[:4])
  no_bias = jax.tree_util.tree_map_with_path(
      lambda p, v: v * 0 if "bias" in sequential.path_str(p) else v, ps)
  np.testing.assert_allclose(seq.layers[0](ps, f, 0.0), seq.layers[0](no_bias, f, 1.0))
  np.testing.assert_allclose(seq.layers[0](ps, 2 * f, 2.0), 2 * seq.layers[0](ps, f, 1.0),
                             rtol=1e-12)   # ReLU layer with a folded bias is 1-homogeneous


def test_forward_from_is_the_hand_written_mlp():
  """Every node's activation, a middle section with its biases scaled by c, and the view's node
  shapes, against the MLP written out in numpy."""
  seq, ps, x, _ = _mlp()

  def hand(f, start, stop, c=1.0):
    for k in range(start, stop):
      f = f @ ps[f"l{k}"]["w"] + c * ps[f"l{k}"]["bias"]
      f = f if k == 2 else np.maximum(f, 0)
    return f
  acts = sequential.node_activations(seq, ps, jnp.asarray(x))
  for node in range(4):
    np.testing.assert_allclose(acts[node], hand(x, 0, node), rtol=1e-12)
    np.testing.assert_allclose(sequential.activation(seq, ps, x, node), hand(x, 0, node),
                               rtol=1e-12)
  np.testing.assert_allclose(sequential.forward_from(seq, ps, acts[1], 1, 3, 0.5),
                             hand(np.asarray(acts[1]), 1, 3, 0.5), rtol=1e-12)
  np.testing.assert_allclose(sequential.apply(seq, ps, x), hand(x, 0, 3), rtol=1e-12)
  assert lib.view_of(seq, ps, x[0]).shapes == ((5,), (8,), (6,), (3,))
  with pytest.raises(ValueError, match="outside"):
    sequential.forward_from(seq, ps, acts[2], 2, 1)


def test_flax_wrapper_matches_the_module():
  import flax.linen as nn

  class Net(nn.Module):
    def setup(self):
      self.a, self.b = nn.Dense(6), nn.Dense(2)

    def first(self, f):
      return jax.nn.relu(self.a(f))

    def second(self, f):
      return self.b(f)

    def __call__(self, x):
      return self.second(self.first(x))
  net = Net()
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))
  params = jax.tree_util.tree_map_with_path(   # Flax starts biases at 0: make them matter
      lambda p, v: v + 0.5 if "bias" in sequential.path_str(p) else v, params)
  seq = sequential.from_flax(net, ["first", "second"], ["in", "h", "out"])
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
  np.testing.assert_allclose(sequential.apply(seq, params, x), net.apply(params, x), rtol=1e-12)
  want = net.apply(params, x, method="first") - jax.nn.relu(x @ params["params"]["a"]["kernel"])
  assert float(jnp.abs(want).max()) > 0          # the bias matters, and c = 0 removes it
  np.testing.assert_allclose(seq.layers[0](params, x, 0.0),
                             jax.nn.relu(x @ params["params"]["a"]["kernel"]), rtol=1e-12)
  with pytest.raises(ValueError, match="no method"):
    sequential.from_flax(net, ["first", "nope"], ["in", "h", "out"])


def test_edge_modes_agree_and_functional_rows_sum_to_output_power():
  seq, ps, x, _ = _mlp()
  cfg = _cfg(center=True)
  bases = lib.build_bases(seq, ps, x, cfg)
  fwd = lib.build_edges(seq, ps, x, bases, _cfg(center=True, edge_mode="forward"))
  rev = lib.build_edges(seq, ps, x, bases, _cfg(center=True, edge_mode="reverse"))
  for a, b in zip(fwd, rev):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
  # one output position: random signs over output positions are exact
  sto = lib.build_edges(seq, ps, x, bases, _cfg(center=True, edge_stochastic_sources=3))
  np.testing.assert_allclose(sto[1], fwd[1], rtol=1e-9, atol=1e-12)
  # a linear section: functional edges of output i sum over inputs to E[F̂_i²]
  seq_l, ps_l, x_l = _chain([5, 4])
  bl = lib.build_bases(seq_l, ps_l, x_l, _cfg())
  e = lib.build_edges(seq_l, ps_l, x_l, bl, _cfg(edge_formula="functional",
                                                 edge_integration="gauss-legendre",
                                                 edge_n_intervals=3))[0]
  out = x_l @ ps_l["A0"] @ bl[1].C
  np.testing.assert_allclose(e.sum(1), (out ** 2).mean(0), rtol=1e-9)


def test_pca_baseline_matches_sklearn():
  from sklearn.decomposition import PCA
  seq, ps, x = _chain([5, 3])
  x = x + 1.5
  b = lib.build_bases(seq, ps, x, _cfg(formula="pca"))[0]
  assert b.n_const == 1
  np.testing.assert_allclose(np.abs(b.C[:, 0]), np.eye(6)[-1], atol=1e-12)
  pca = PCA().fit(x)
  np.testing.assert_allclose(np.abs(b.C[:-1, 1:]), np.abs(pca.components_.T), atol=1e-8)
  np.testing.assert_allclose(b.Lambda[1:] * len(x) / (len(x) - 1), pca.explained_variance_,
                             rtol=1e-8)


def test_node_ablation_endpoints_and_projection():
  seq, ps, x, y = _mlp()
  bases = lib.build_bases(seq, ps, x, _cfg(center=True))
  score = metrics.classification
  full = ablations.node_ablation_curve(seq, ps, x, y, 1, bases[1], score, [0])[0]
  direct = {k: float(v) for k, v in score(sequential.apply(seq, ps, x), y).items()}
  assert full["loss"] == pytest.approx(direct["loss"], rel=1e-12)
  n = bases[1].C.shape[0]
  zero = ablations.node_ablation_curve(seq, ps, x, y, 1, bases[1], score, [n])[0]
  out0 = sequential.forward_from(seq, ps, jnp.zeros((len(x), 8)), 1, None, 0.0)
  assert zero["loss"] == pytest.approx(float(score(out0, y)["loss"]), rel=1e-12)
  r = 3
  b = bases[1]
  h = np.asarray(sequential.node_activations(seq, ps, x)[1])
  proj = np.c_[h, np.ones(len(x))] @ b.C[:, :r] @ b.C_pinv[:r]
  want = sequential.forward_from(seq, ps, proj[:, :-1], 1, None, jnp.asarray(proj[:, -1:]))
  got = ablations.node_ablation_curve(seq, ps, x, y, 1, b, score, [n - r])[0]
  assert got["n_basis_kept"] == r
  assert got["loss"] == pytest.approx(float(score(want, y)["loss"]), rel=1e-9)


def test_edge_ablation_endpoints():
  seq, ps, x, y = _mlp()
  bases = lib.build_bases(seq, ps, x, _cfg(center=True))
  e = lib.build_edges(seq, ps, x, bases, _cfg(center=True))
  score = metrics.classification
  l = 1
  k_out, k_in = e[l].shape
  full = ablations.edge_ablation_scores(seq, ps, x, y, l, bases[l], bases[l + 1],
                                        np.ones((k_out, k_in)), score)
  direct = float(score(sequential.apply(seq, ps, x), y)["loss"])
  assert full["loss"] == pytest.approx(direct, rel=1e-9)
  none = ablations.edge_ablation_scores(seq, ps, x, y, l, bases[l], bases[l + 1],
                                        ablations.edge_mask(e[l], 0, 1), score)
  # only the constant feature: node l+1 is the section applied to the constant-only input
  b_in, b_out = bases[l], bases[l + 1]
  h = np.c_[np.asarray(sequential.node_activations(seq, ps, x)[l]), np.ones(len(x))] @ b_in.C
  const_only = (h * (np.arange(k_in) == 0)) @ b_in.C_pinv
  nxt = seq.layers[l](ps, const_only[:, :-1], jnp.asarray(const_only[:, -1:]))
  nxt = np.c_[nxt, const_only[:, -1:]] @ b_out.C @ b_out.C_pinv
  out = sequential.forward_from(seq, ps, nxt[:, :-1], l + 1, None, jnp.asarray(nxt[:, -1:]))
  assert none["loss"] == pytest.approx(float(score(out, y)["loss"]), rel=1e-9)


def test_edge_mask_keeps_the_strongest_and_every_constant_edge():
  e = np.array([[9.0, 1.0, 8.0, 0.5],
                [7.0, 6.0, 2.0, 5.0]])     # input 0 is the constant direction
  want = np.array([[1, 0, 1, 0],
                   [1, 1, 0, 1]])          # 8, 6, 5 are the three strongest non-constant edges
  np.testing.assert_array_equal(ablations.edge_mask(e, 3, 1), want)
  np.testing.assert_array_equal(ablations.edge_mask(e, 0, 1), [[1, 0, 0, 0], [1, 0, 0, 0]])
  assert ablations.edge_threshold(e, 3, 1) == 5.0


def test_exponential_schedule_and_bisection():
  assert ablations.exponential_schedule(12, 3, 2.0) == [12, 11, 10, 9, 8, 6, 2, 0]
  for boundary in (1, 7, 50, 100):
    calls = []
    k = ablations.bisect(lambda n: calls.append(n) or n >= boundary, 0, 100)
    assert k == boundary and len(calls) <= 7
  curve = [{"n_kept": n, "accuracy": a} for n, a in [(0, 0.1), (1, 0.5), (2, 0.96), (3, 0.9),
                                                      (4, 0.97), (8, 1.0)]]
  assert ablations.directions_needed(curve, 0.95) == 4


def test_bad_input_fails_clearly():
  seq, ps, x = _chain([4, 3])
  with pytest.raises(ConfigError, match="formula"):
    lib.build_bases(seq, ps, x, _cfg(formula="jacobain"))
  with pytest.raises(ConfigError, match="did you mean 'center'"):
    c = _cfg()
    c["centre"] = True
    lib.validate(c)
  with pytest.raises(ConfigError, match="alpha = 1"):
    lib.validate(_cfg(formula="(1-alpha)^2"))
  with pytest.raises(ValueError, match="node names"):
    sequential.from_functions([lambda p, f: f], ["only-one"])
  bad = sequential.from_functions([lambda p, f: jnp.sum(f)], ["a", "b"])   # a scalar node
  with pytest.raises(ValueError, match=r"\[d\], \[T, d\] or \[H, W, C\]"):
    lib.view_of(bad, {}, jnp.ones(3))
