"""SPD oracles (METHODS.md §6.3): sigmoids, masks, losses at known decompositions, init, the
masked forward pass against dense per-sample weights, CI functions against a loop."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paramdecomp.core import train
from paramdecomp.core.config import ConfigError
from paramdecomp.core.lowrank import Factors
from paramdecomp.methods import spd, spd_ci, spd_masks
from paramdecomp.toy_models import tms


def _cfg(**kw):
  c = spd.default_config()
  c.update(kw)
  return c


def _loss(apply, cfg):
  """The loss, jitted (one compile beats hundreds of eager dispatches)."""
  return jax.jit(lambda s, p, x, k: spd.loss(s, p, x, k, apply=apply, cfg=cfg))


# ---- sigmoids and masks ----------------------------------------------------------------------

Z = jnp.array([-1.0, 0.5, 2.0])


def test_leaky_hard_sigmoids_values_and_slopes():
  lo, up = spd_ci.sigmoids(Z, "paper")
  np.testing.assert_allclose(lo, [-0.01, 0.5, 1.0])
  np.testing.assert_allclose(up, [0.0, 0.5, 1.01])
  d_lo = jax.vmap(jax.grad(lambda z: spd_ci.sigmoids(z, "paper")[0]))(Z)
  d_up = jax.vmap(jax.grad(lambda z: spd_ci.sigmoids(z, "paper")[1]))(Z)
  np.testing.assert_allclose(d_lo, [0.01, 1.0, 0.0])
  np.testing.assert_allclose(d_up, [0.0, 1.0, 0.01])


def test_head_lower_sigmoid_clips_and_leaks_only_upward_gradients():
  lo, _ = spd_ci.sigmoids(Z, "head")
  np.testing.assert_allclose(lo, [0.0, 0.5, 1.0])
  vjp = jax.vjp(lambda z: spd_ci.lower_leaky_head(z), Z)[1]
  np.testing.assert_allclose(vjp(jnp.array([-2.0, 3.0, 5.0]))[0], [-0.02, 3.0, 0.0])
  np.testing.assert_allclose(vjp(jnp.array([2.0, 3.0, 5.0]))[0], [0.0, 3.0, 0.0])


def test_mask_formula_and_reparametrisation_gradient():
  r = spd_masks.uniform(jax.random.PRNGKey(0), {"s": jnp.zeros((50_000, 3))})
  g1 = spd_masks.masks({"s": jnp.ones((50_000, 3))}, r)["s"]
  g0 = spd_masks.masks({"s": jnp.zeros((50_000, 3))}, r)["s"]
  np.testing.assert_array_equal(g1, 1.0)
  np.testing.assert_array_equal(g0, r["s"])
  g = jnp.array([0.2, 0.5, 0.9])
  m = spd_masks.masks({"s": jnp.broadcast_to(g, (50_000, 3))}, r)["s"]
  se = m.std(0) / np.sqrt(m.shape[0])
  assert np.all(np.abs(m.mean(0) - (g + (1 - g) / 2)) < 4 * se)
  rs = r["s"][:4, 0]
  dm = jax.vmap(jax.grad(lambda gg, rr: spd_masks.masks({"s": gg}, {"s": rr})["s"]))(
      jnp.full(4, 0.3), rs)
  np.testing.assert_allclose(dm, 1 - rs)
  b = spd_masks.binomial(jax.random.PRNGKey(1), {"s": jnp.zeros((10_000,))})["s"]
  assert set(np.unique(b)) == {0.0, 1.0} and abs(float(b.mean()) - 0.5) < 0.02


# ---- the identity oracle ---------------------------------------------------------------------

D = 6


def _identity(params, x):   # f(x) = W x with W = I
  return x @ params["W"].T


def _identity_state(w, b, cfg):
  """U_c = V_c = e_c (C = d); affine gates z = w h + b on h_c = x_c."""
  params = {"W": jnp.eye(D)}
  x = jnp.zeros((2, D))
  st = spd.init(jax.random.PRNGKey(0), params, cfg, apply=_identity, x=x)
  eye = jnp.eye(D)[..., None]
  ci = {"W": spd_ci.Affine(jnp.full(D, w), jnp.full(D, b))}
  return params, st._replace(sub={"W": Factors(eye, eye)}, ci=ci)


def _binary_x(key, B=64):
  return (jax.random.uniform(key, (B, D)) < 0.3).astype(jnp.float64)


@pytest.mark.parametrize("p", [0.5, 1.0, 2.0])
def test_identity_decomposition_with_perfect_importances_has_zero_losses(p):
  cfg = _cfg(C=D, d_gate=0, decompose=("W",), pnorm=p, recon_coeff=1.0,
             recon_layerwise_coeff=1.0)
  params, st = _identity_state(1.0, 0.0, cfg)   # g_c = x_c in {0, 1}: 1 exactly where active
  x = _binary_x(jax.random.PRNGKey(1))
  f = _loss(_identity, cfg)
  for k in range(3):
    _, m = f(st, params, x, jax.random.PRNGKey(k))
    for name in ("faithfulness", "stochastic_recon", "stochastic_recon_layerwise", "recon",
                 "recon_layerwise"):
      assert float(m[name]) == 0.0, name
    np.testing.assert_allclose(m["importance_minimality"], jnp.mean(jnp.sum(x != 0, 1)))
    np.testing.assert_allclose(m["ci_l0/W"], jnp.mean(jnp.sum(x != 0, 1)))


def test_zero_importances_scale_the_output_by_r():
  """g = 0: the masked output is r * x, so E_r[L_SR] = mean(x^2) / 3 (Monte Carlo)."""
  cfg = _cfg(C=D, d_gate=0, decompose=("W",))
  params, st = _identity_state(0.0, 0.0, cfg)
  x = jax.random.uniform(jax.random.PRNGKey(2), (32, D))
  sr = jax.jit(jax.vmap(lambda k: spd.loss(st, params, x, k, apply=_identity, cfg=cfg)[1][
      "stochastic_recon"]))(jax.random.split(jax.random.PRNGKey(3), 4000))
  se = sr.std() / np.sqrt(sr.size)
  assert abs(float(sr.mean()) - float(jnp.mean(x ** 2)) / 3) < 4 * se


def test_layerwise_loss_of_one_site_is_the_full_loss_and_of_two_their_mean():
  """With one site the layerwise reconstruction (m = g) is the full one; with the tied TMS's two
  sites it is the mean of the passes masked at one site each (the other at the target)."""
  cfg = _cfg(C=D, d_gate=0, decompose=("W",), recon_coeff=1.0, recon_layerwise_coeff=1.0)
  params, st = _identity_state(0.7, 0.1, cfg)
  st = st._replace(sub={"W": Factors(*[jax.random.normal(jax.random.PRNGKey(i), (D, D, 1))
                                       for i in (4, 5)])})
  x = jax.random.uniform(jax.random.PRNGKey(6), (16, D))
  _, m = _loss(_identity, cfg)(st, params, x, jax.random.PRNGKey(7))
  assert float(m["recon"]) > 1e-3
  np.testing.assert_allclose(m["recon_layerwise"], m["recon"], rtol=1e-14)

  params = _tms_id(jax.random.PRNGKey(8))
  cfg = _cfg(C=4, decompose=("W",), recon_coeff=1.0, recon_layerwise_coeff=1.0)
  x = jax.random.uniform(jax.random.PRNGKey(9), (16, 5))
  st = spd.init(jax.random.PRNGKey(10), params, cfg, apply=tms.apply, x=x)
  ss = spd.sites(tms.apply, params, x, ["W"])
  g = spd.causal_importances(tms.apply, params, st, x, cfg)
  y = tms.apply(params, x)
  one = [jnp.mean((spd.masked_apply(tms.apply, params, st, x, {s: g[s]}, ss) - y) ** 2)
         for s in ("W:0", "W:1")]
  _, m = _loss(tms.apply, cfg)(st, params, x, jax.random.PRNGKey(0))
  np.testing.assert_allclose(m["recon_layerwise"], (one[0] + one[1]) / 2, rtol=1e-12)
  assert abs(float(one[0] - one[1])) > 1e-6 and abs(float(m["recon"] - one[0])) > 1e-6


# ---- TMS: tied sites, the masked pass against dense per-sample weights -----------------------

def _tms_id(key, n=5, h=2):
  mc = tms.model_config(n, h, n_hidden_layers=1)
  return tms.init(key, mc)


def test_tied_tms_sites_and_masked_pass_match_dense_per_sample_weights():
  """Encoder W x, decoder W^T h (the same leaf's second product) and the identity layer are three
  sites; a masked pass with only some sites masked equals the model run sample by sample with
  dense weights sum_c m_bc u_c v_c^T at those sites and the target's elsewhere."""
  params = _tms_id(jax.random.PRNGKey(0))
  cfg = _cfg(C=7, decompose=("W", "hidden"))
  x = jax.random.uniform(jax.random.PRNGKey(1), (9, 5))
  st = spd.init(jax.random.PRNGKey(2), params, cfg, apply=tms.apply, x=x)
  ss = spd.sites(tms.apply, params, x, ["W", "hidden"])
  assert [(s.name, s.axis, s.d_in) for s in ss] == [("W:0", 1, 5), ("W:1", 0, 2),
                                                    ("hidden", 1, 2)]
  mats = spd.subcomponents(st)
  masks = {s.name: jax.random.uniform(jax.random.PRNGKey(3 + i), (9, 7)) for i, s in
           enumerate(ss)}

  def dense(b, which):
    w = {s: jnp.einsum("c,cij->ij", masks[s][b], mats[p]) if s in which else t
         for s, p, t in (("W:0", "W", params["W"]), ("W:1", "W", params["W"]),
                         ("hidden", "hidden", params["hidden"][0]))}
    hid = (x[b] @ w["W:0"].T) @ w["hidden"].T
    return jax.nn.relu(hid @ w["W:1"] + params["b"])

  for which in (("W:0", "W:1", "hidden"), ("W:1",), ("hidden",), ("W:0",)):
    got = spd.masked_apply(tms.apply, params, st, x, {s: masks[s] for s in which}, ss)
    want = jnp.stack([dense(b, which) for b in range(9)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_init_makes_each_piece_the_projection_of_the_target_on_its_direction():
  params = _tms_id(jax.random.PRNGKey(4))
  cfg = _cfg(C=11, decompose=("W", "hidden"))
  st = spd.init(jax.random.PRNGKey(5), params, cfg, apply=tms.apply, x=jnp.zeros((2, 5)))
  for path, f in spd.shared(st.sub).items():
    w = params[path].reshape(f.U.shape[1], f.V.shape[1])
    v = f.V[..., 0]
    # W x contracts the input side V: the output side U carries the overlap, V is unit
    np.testing.assert_allclose(jnp.linalg.norm(v, axis=1), 1.0, rtol=1e-12)
    P = spd.subcomponents(st)[path]
    inner = jnp.einsum("cab,ab->c", P, w)
    np.testing.assert_allclose(inner, jnp.sum(P ** 2, axis=(1, 2)), rtol=1e-10)
    unit = P / jnp.linalg.norm(P, axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(P, jnp.einsum("cab,ab->c", unit, w)[:, None, None] * unit,
                               atol=1e-12)


def test_tms_id_identity_from_any_rank_one_pieces_with_full_importance_reconstructs():
  """Any m1 rank-one pieces summing to I (a rotation's columns) with CI = 1 on the identity
  site, the exact features on W (the other subcomponents zero, CI 1): every reconstruction
  loss is zero, for every mask draw."""
  params = _tms_id(jax.random.PRNGKey(6))
  C = 5
  cfg = _cfg(C=C, d_gate=0, decompose=("W", "hidden"))
  x = jax.random.uniform(jax.random.PRNGKey(7), (32, 5))
  st = spd.init(jax.random.PRNGKey(8), params, cfg, apply=tms.apply, x=x)
  th = 0.7
  q = jnp.array([[jnp.cos(th), -jnp.sin(th)], [jnp.sin(th), jnp.cos(th)]])
  hid_u = jnp.zeros((C, 2, 1)).at[:2, :, 0].set(q.T)      # u_c = q_c, v_c = q_c: sum = I
  W = params["W"]
  w_u = jnp.zeros((C, 2, 1)).at[:, :, 0].set(W.T)           # P_c = W[:, c] e_c^T
  w_v = jnp.eye(5)[..., None]
  ones = spd_ci.Affine(jnp.zeros(C), jnp.ones(C))
  st = st._replace(sub={"W": Factors(w_u, w_v), "hidden": Factors(hid_u, hid_u)},
                   ci={s: ones for s in st.ci})
  f = _loss(tms.apply, cfg)
  for k in range(3):
    _, m = f(st, params, x, jax.random.PRNGKey(k))
    for name in ("faithfulness", "stochastic_recon", "stochastic_recon_layerwise"):
      assert float(m[name]) < 1e-28, (name, m[name])


def _tied_states(key, cfg, x):
  """The tied TMS 5-2 target and one SPD init as a shared state and as its per-use twin."""
  params = tms.init(jax.random.PRNGKey(0), tms.model_config(5, 2))
  st = spd.init(key, params, _cfg(**{**cfg.to_dict(), "tied_updates": "shared"}),
                apply=tms.apply, x=x)
  per_use = spd.init(key, params, _cfg(**{**cfg.to_dict(), "tied_updates": "per_use"}),
                     apply=tms.apply, x=x)
  return params, st, per_use


def test_per_use_tied_gradients_are_the_parts_of_the_shared_gradient():
  """Per-use copies of the tied W: the same loss, each copy gets only its own site's gradient
  (the two differ), and their sum is the shared parameter's gradient."""
  cfg = _cfg(C=7, schatten_coeff=0.1, recon_coeff=1.0)
  x = jax.random.uniform(jax.random.PRNGKey(1), (16, 5))
  params, st, per_use = _tied_states(jax.random.PRNGKey(2), cfg, x)
  assert isinstance(per_use.sub["W"], tuple) and len(per_use.sub["W"]) == 2
  f = jax.jit(jax.value_and_grad(
      lambda s: spd.loss(s, params, x, jax.random.PRNGKey(3), apply=tms.apply, cfg=cfg)[0]))
  v, g = f(st)
  v2, g2 = f(per_use)
  np.testing.assert_allclose(v2, v, rtol=1e-6)
  a, b = g2.sub["W"]
  assert float(jnp.abs(a.U - b.U).max()) > 1e-3 * float(jnp.abs(g.sub["W"].U).max())
  jax.tree.map(lambda s, t, u: np.testing.assert_allclose(s + t, u, rtol=1e-5, atol=1e-9),
               a, b, g.sub["W"])
  jax.tree.map(lambda s, t: np.testing.assert_allclose(s, t, rtol=1e-5, atol=1e-9),
               g2.ci, g.ci)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_per_use_tied_step_moves_every_copy_by_the_sum_of_the_uses_updates(opt):
  """One step: the copies stay equal; with SGD (linear in the gradient) the per-use step is the
  shared step; with Adam it is the sum of Adam's updates of each use's gradient alone."""
  cfg = _cfg(C=7)
  x = jax.random.uniform(jax.random.PRNGKey(4), (16, 5))
  params, st, per_use = _tied_states(jax.random.PRNGKey(5), cfg, x)
  tx = optax.sgd(0.1) if opt == "sgd" else optax.adam(1e-2)
  batch = lambda k: jax.random.uniform(k, x.shape)
  def step(s, tied):
    update = spd.make_update(tms.apply, _cfg(**{**cfg.to_dict(), "tied_updates": tied}), batch, tx)
    return jax.jit(update)(train.init_state(s, tx, jax.random.PRNGKey(6)), params)[0].params

  new = step(per_use, "per_use")
  a, b = new.sub["W"]
  jax.tree.map(np.testing.assert_array_equal, a, b)
  if opt == "sgd":
    jax.tree.map(lambda s, t: np.testing.assert_allclose(s, t, rtol=1e-5, atol=1e-7),
                 a, step(st, "shared").sub["W"])
  else:
    key = jax.random.fold_in(jax.random.PRNGKey(6), 0)
    g = jax.grad(lambda s: train.loss_on_batches(spd.loss, batch, apply=tms.apply, cfg=cfg)(
        s, params, key)[0])(per_use).sub["W"]
    moves = [tx.update(gi, tx.init(gi))[0] for gi in g]
    want = jax.tree.map(lambda w, u0, u1: w + u0 + u1, per_use.sub["W"][0], *moves)
    jax.tree.map(lambda s, t: np.testing.assert_allclose(s, t, rtol=1e-6, atol=1e-8), a, want)
    assert spd.shared(new.sub)["W"] is a and spd.subcomponents(new)["W"].shape == (7, 2, 5)


# ---- CI functions against a loop over subcomponents -------------------------------------------

# (7, 211) positions are more rows than one chunk holds (2^15 // (C d) = 1365) and not a multiple
# of it: the chunked, padded, rematerialised path
# exact: the written backward; tanh: autodiff
@pytest.mark.parametrize("pos", [(3, 5), (7, 211)])
@pytest.mark.parametrize("gelu", ["exact", "tanh"])
def test_scalar_ci_mlps_match_a_loop_over_subcomponents(pos, gelu):
  C, d = 6, 4
  fn = spd_ci.init_scalar(jax.random.PRNGKey(0), C, d, jnp.float64)
  fn = fn._replace(b_in=jax.random.normal(jax.random.PRNGKey(1), (C, d)),
                   b_out=jax.random.normal(jax.random.PRNGKey(2), (C,)))
  h = jax.random.normal(jax.random.PRNGKey(3), pos + (C,))   # [B, T, C]
  got = spd_ci.run_scalar(fn, h, gelu)

  @jax.jit
  def one(hc, w_in, b_in, w_out, b_out):   # subcomponent c alone
    return jax.nn.gelu(hc[..., None] * w_in + b_in, approximate=gelu == "tanh") @ w_out + b_out

  for c in range(C):
    np.testing.assert_allclose(got[..., c], one(h[..., c], fn.w_in[c], fn.b_in[c], fn.w_out[c],
                                                fn.b_out[c]), rtol=1e-12)
  # gradients through the chunks (padding rows get none) against the loop's
  u = jax.random.normal(jax.random.PRNGKey(5), h.shape)
  g = jax.grad(lambda f, x: jnp.sum(u * spd_ci.run_scalar(f, x, gelu)), argnums=(0, 1))(fn, h)
  g_loop = jax.grad(lambda f, x: sum(jnp.sum(u[..., c] * one(x[..., c], f.w_in[c], f.b_in[c],
                                                             f.w_out[c], f.b_out[c]))
                                     for c in range(C)), argnums=(0, 1))(fn, h)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_loop)):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
  aff = spd_ci.init_scalar(jax.random.PRNGKey(4), C, 0, jnp.float64)
  for c in range(C):
    np.testing.assert_allclose(spd_ci.run_scalar(aff, h)[..., c], aff.w[c] * h[..., c] + aff.b[c])


def test_vector_and_shared_ci_mlps_match_explicit_layers():
  acts = {"a": jax.random.normal(jax.random.PRNGKey(0), (4, 3)),
          "b": jax.random.normal(jax.random.PRNGKey(1), (4, 2))}
  vec = spd_ci.init_ci(jax.random.PRNGKey(2), "vector_mlp", [("a", 3), ("b", 2)], 5, 7,
                       jnp.float64)
  z = spd_ci.ci_logits("vector_mlp", vec, {}, acts)
  for s in acts:
    (w1, w2), (b1, b2) = vec[s].ws, vec[s].bs
    want = jax.nn.gelu(acts[s] @ w1 + b1, approximate=False) @ w2 + b2
    np.testing.assert_allclose(z[s], want, rtol=1e-12)
  sh = spd_ci.init_ci(jax.random.PRNGKey(3), "shared_mlp", [("a", 3), ("b", 2)], 5, 0,
                      jnp.float64)
  z = spd_ci.ci_logits("shared_mlp", sh, {}, acts)
  full = jnp.concatenate([acts["a"], acts["b"]], -1) @ sh[spd_ci.SHARED].ws[0] + sh[
      spd_ci.SHARED].bs[0]
  np.testing.assert_allclose(z["a"], full[:, :5], rtol=1e-12)
  np.testing.assert_allclose(z["b"], full[:, 5:], rtol=1e-12)


def test_ci_functions_reach_v_through_the_inner_activations():
  params = _tms_id(jax.random.PRNGKey(9))
  cfg = _cfg(C=4, decompose=("W",), stochastic_recon_coeff=0.0,
             stochastic_recon_layerwise_coeff=0.0, faithfulness_coeff=0.0, tied_updates="shared")
  x = jax.random.uniform(jax.random.PRNGKey(10), (8, 5))
  st = spd.init(jax.random.PRNGKey(11), params, cfg, apply=tms.apply, x=x)
  grads = jax.jit(jax.grad(lambda s: spd.loss(s, params, x, jax.random.PRNGKey(0),
                                              apply=tms.apply, cfg=cfg)[0]))(st)
  assert float(jnp.abs(grads.sub["W"].V).max()) > 0   # only the importance loss is on


# ---- p-annealing, config errors ---------------------------------------------------------------

@pytest.mark.parametrize("p", [0.5, 1.0, 2.0])
def test_importance_gradient_is_finite_where_importances_are_zero(p):
  """g_up = 0 for z <= 0: d(g_up^p)/dz must be 0 there, not 0 * inf, also for p < 1."""
  z = jnp.array([-1.0, 0.0, 0.3, 2.0])
  grad = jax.grad(lambda z: spd.importance_minimality({"s": spd_ci.upper_leaky(z)}, p))(z)
  np.testing.assert_allclose(grad, [0.0, 0.0, p * 0.3 ** (p - 1), p * 1.01 ** (p - 1) * 0.01],
                             rtol=1e-12)


def test_p_annealing_is_linear_between_its_fractions():
  cfg = _cfg(pnorm=2.0, pnorm_final=0.5, anneal_start_frac=0.25, anneal_end_frac=0.75,
             anneal_steps=1000)
  got = [float(spd.pnorm_at(s, cfg)) for s in (0, 250, 500, 750, 1000)]
  np.testing.assert_allclose(got, [2.0, 2.0, 1.25, 0.5, 0.5])
  assert float(spd.pnorm_at(100, _cfg(pnorm=1.5))) == 1.5


@pytest.mark.parametrize("field, value, match", [
    ("ci_fn", "gru", "'ci_fn'"), ("d_gate", -1, "'d_gate'"), ("gelu", "erf", "'gelu'"),
    ("mask_source", "pgd", "'mask_source'"), ("pnorm_final", 0.5, "'anneal_steps'"),
    ("stochastic_recon_coeff", -1.0, "'stochastic_recon_coeff'"), ("C", 0, "'C'"),
    ("tied_updates", "twice", "'tied_updates'")])
def test_bad_configs_fail_by_name(field, value, match):
  with pytest.raises(ConfigError, match=match):
    spd.validate(_cfg(**{field: value}))


@pytest.mark.parametrize("ci_fn, d_gate, source, sigmoid", [
    ("vector_mlp", 8, "binomial", "head"), ("shared_mlp", 0, "uniform", "paper")])
def test_every_ci_function_and_mask_source_trains_through_the_loss(ci_fn, d_gate, source,
                                                                   sigmoid):
  """Init, loss and gradients for the other CI functions, mask sources and sigmoid; the
  binomial masks are exactly g or 1 (r in {0, 1})."""
  params = _tms_id(jax.random.PRNGKey(12))
  cfg = _cfg(C=6, decompose=("W", "hidden"), ci_fn=ci_fn, d_gate=d_gate, mask_source=source,
             sigmoid=sigmoid, schatten_coeff=0.1, out_recon_coeff=1.0)
  x = jax.random.uniform(jax.random.PRNGKey(13), (8, 5))
  st = spd.init(jax.random.PRNGKey(14), params, cfg, apply=tms.apply, x=x)
  (v, m), grads = jax.jit(jax.value_and_grad(
      lambda s: spd.loss(s, params, x, jax.random.PRNGKey(0), apply=tms.apply, cfg=cfg),
      has_aux=True))(st)
  assert np.isfinite(float(v)) and {"schatten", "out_recon"} <= set(m)
  assert all(float(jnp.abs(a).max()) > 0 for a in jax.tree.leaves(grads.ci))
  g = spd.causal_importances(tms.apply, params, st, x, cfg)
  r = spd_masks.SOURCES[source](jax.random.PRNGKey(1), g)
  if source == "binomial":
    for s in g:
      mk = spd_masks.masks(g, r)[s]
      assert bool(jnp.all((mk == g[s]) | (mk == 1.0)))


def test_bad_inputs_fail_clearly():
  from paramdecomp.core.factored import PerUse, UnsupportedUse, apply_factored
  from paramdecomp.core.inputs import BatchShapeError
  from paramdecomp.core.lowrank import LowRank
  params = _tms_id(jax.random.PRNGKey(15))
  cfg = _cfg(C=3, decompose=("W",), tied_updates="shared")
  with pytest.raises(ValueError, match="needs apply= and x="):
    spd.init(jax.random.PRNGKey(0), params, cfg)
  x = jnp.ones((4, 5))
  st = spd.init(jax.random.PRNGKey(0), params, cfg, apply=tms.apply, x=x)
  with pytest.raises(BatchShapeError):
    spd.loss(st, params, jnp.ones(5), jax.random.PRNGKey(0), apply=tms.apply, cfg=cfg)
  lr = LowRank(st.sub["W"].U[..., 0].T, st.sub["W"].V[..., 0].T, jnp.ones((4, 3)))
  with pytest.raises(ValueError, match="1 per-product factors for 'W'"):
    apply_factored(tms.apply, params, {"W": PerUse((lr,))}, x)
  with pytest.raises(ValueError, match="per-position scales of shape"):
    apply_factored(tms.apply, params, {"W": PerUse((lr._replace(g=jnp.ones((2, 3))), None))}, x)
  # a weight with per-position scales has no dense value for a non-product use
  elementwise = lambda p, x: x * jnp.sum(p["W"])
  with pytest.raises(UnsupportedUse, match="no single dense value"):
    apply_factored(elementwise, params, {"W": lr}, x)
  with pytest.raises(ValueError, match="chunk_size=3 does not divide"):
    spd.loss(st, params, x, jax.random.PRNGKey(0), apply=tms.apply,
             cfg=_cfg(C=3, decompose=("W",), chunk_size=3))
