import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paramdecomp.methods import apd
from paramdecomp.core import lowrank, pytree, train
from paramdecomp.core.checkpoint import Checkpointer
from paramdecomp.core.config import ConfigError
from paramdecomp.core.lowrank import Factors
from paramdecomp.toy_models import data, tms


def _cfg(**kw):
  c = apd.default_config()
  c.update(kw)
  return c


def _brute_gradient_attr(apply, params, comps, x):
  """sqrt(mean_o (sum_l <d f_o / d W_l, P_c,l>)^2) from full jacobians w.r.t. the weights."""
  paths = list(comps.factors)
  ws = pytree.get(params, paths)
  jac = jax.jacrev(lambda w: apply(pytree.replace(params, w), x))(ws)  # [B, O, a, b]
  mats = {p: lowrank.components(f) for p, f in comps.factors.items()}
  dots = sum(jnp.einsum("boij,cij->bco", jac[p], mats[p]) for p in paths)
  return jnp.sqrt(jnp.mean(dots**2, axis=-1))


def _linear(params, x):
  return x @ params["W"].T


def test_gradient_attribution_of_a_linear_layer_is_closed_form():
  key = jax.random.PRNGKey(0)
  params = {"W": jax.random.normal(key, (4, 6))}
  cfg = _cfg(C=3, m=2, decompose=("W",))
  comps = apd.init(jax.random.PRNGKey(1), params, cfg)
  x = jax.random.normal(jax.random.PRNGKey(2), (10, 6))
  got = apd.attributions(_linear, params, comps, x, cfg)
  mats = lowrank.components(comps.factors["W"])
  want = jnp.linalg.norm(jnp.einsum("cij,bj->bci", mats, x), axis=-1) / jnp.sqrt(4.0)
  np.testing.assert_allclose(got, want, rtol=1e-10)


def _two_layer(params, x):
  return jnp.tanh(x @ params["l1"]["w"].T + params["l1"]["b"]) @ params["l2"]["w"].T


@pytest.mark.parametrize("model", ["target", "apd"])
def test_gradient_attribution_of_two_layers_matches_jacrev(model):
  ks = jax.random.split(jax.random.PRNGKey(3), 4)
  params = {"l1": {"w": jax.random.normal(ks[0], (5, 3)), "b": jax.random.normal(ks[1], (5,))},
            "l2": {"w": jax.random.normal(ks[2], (2, 5))}}
  cfg = _cfg(C=4, m=2, decompose=(r"l\d/w",), attribution_model=model)
  comps = apd.init(ks[3], params, cfg)
  assert list(comps.factors) == ["l1/w", "l2/w"]
  x = jax.random.normal(ks[3], (7, 3))
  got = apd.attributions(_two_layer, params, comps, x, cfg)
  base = params if model == "target" else pytree.replace(
      params, {p: lowrank.total(f) for p, f in comps.factors.items()})
  np.testing.assert_allclose(got, _brute_gradient_attr(_two_layer, base, comps, x), rtol=1e-9)


def test_ablation_attribution_removes_the_component():
  ks = jax.random.split(jax.random.PRNGKey(4), 3)
  params = {"l1": {"w": jax.random.normal(ks[0], (5, 3)), "b": jnp.zeros(5)},
            "l2": {"w": jax.random.normal(ks[1], (2, 5))}}
  cfg = _cfg(C=3, m=2, decompose=(r"l\d/w",), attribution="ablation")
  comps = apd.init(ks[2], params, cfg)
  x = jax.random.normal(ks[2], (6, 3))
  got = apd.attributions(_two_layer, params, comps, x, cfg)
  for c in range(3):
    keep = jnp.ones(3).at[c].set(0.0)
    with_all = pytree.replace(params, {p: lowrank.total(f) for p, f in comps.factors.items()})
    without = pytree.replace(params, {p: lowrank.masked_total(f, keep)
                                      for p, f in comps.factors.items()})
    want = jnp.mean((_two_layer(with_all, x) - _two_layer(without, x)) ** 2, axis=-1)
    np.testing.assert_allclose(got[:, c], want, rtol=1e-9)


def test_masked_apply_equals_per_sample_loop():
  ks = jax.random.split(jax.random.PRNGKey(5), 3)
  params = {"l1": {"w": jax.random.normal(ks[0], (5, 3)), "b": jnp.ones(5)},
            "l2": {"w": jax.random.normal(ks[1], (2, 5))}}
  comps = apd.init(ks[2], params, _cfg(C=4, m=3, decompose=(r"l\d/w",)))
  x = jax.random.normal(ks[2], (5, 3))
  mask = jax.random.bernoulli(ks[0], 0.5, (5, 4)).astype(jnp.float64)
  got = apd.masked_apply(_two_layer, params, comps, mask, x)
  for b in range(5):
    w = {p: sum(mask[b, c] * lowrank.components(f)[c] for c in range(4))
         for p, f in comps.factors.items()}
    np.testing.assert_allclose(got[b], _two_layer(pytree.replace(params, w), x[b:b + 1])[0],
                               rtol=1e-10, atol=1e-12)


def _exact_factors(w, n_components):
  """Factors whose first component is exactly w (via SVD) and the others zero."""
  u, s, vt = jnp.linalg.svd(w, full_matrices=False)
  m = s.shape[0]
  U = jnp.zeros((n_components,) + (w.shape[0], m)).at[0].set(u * s)
  V = jnp.zeros((n_components,) + (w.shape[1], m)).at[0].set(vt.T)
  return Factors(U, V)


def test_faithfulness_is_zero_at_the_target_and_delta_squared_over_n_off_it():
  w = jax.random.normal(jax.random.PRNGKey(6), (3, 5))
  params = {"W": w, "b": jnp.zeros(5)}
  comps = apd.State({"W": _exact_factors(w, 2)})
  x = jnp.eye(5)
  cfg = _cfg(C=2, m=3, sparsity="topk", topk=1)
  _, met = apd.loss(comps, params, x, None, apply=tms.apply, cfg=cfg)
  assert abs(float(met["faithfulness"])) < 1e-20
  delta = 0.3
  moved = {"W": w.at[1, 2].add(delta), "b": params["b"]}
  _, met = apd.loss(comps, moved, x, None, apply=tms.apply, cfg=cfg)
  np.testing.assert_allclose(met["faithfulness"], delta**2 / w.size, rtol=1e-10)


def _pentagon(bias=-0.35):
  ang = 2 * jnp.pi * jnp.arange(5) / 5
  return {"W": jnp.stack([jnp.cos(ang), jnp.sin(ang)]), "b": jnp.full(5, bias)}


def _ground_truth(w):
  """Z^(c) = W[:, c] e_c^T as rank-1 factors."""
  n = w.shape[1]
  return apd.State({"W": Factors(w.T[:, :, None], jnp.eye(n)[:, :, None])})


def test_tms_ground_truth_masked_forward_is_closed_form():
  params = {"W": jax.random.normal(jax.random.PRNGKey(7), (2, 5)),
            "b": jax.random.normal(jax.random.PRNGKey(8), (5,))}
  x = data.sparse_features(jax.random.PRNGKey(9), 64, 5, 0.4, dtype=jnp.float64)
  mask = (x != 0).astype(jnp.float64)
  got = apd.masked_apply(tms.apply, params, _ground_truth(params["W"]), mask, x)
  w, b = params["W"], params["b"]
  want = jnp.where(mask == 1, jax.nn.relu(x @ w.T @ w + b), jax.nn.relu(b))
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_tms_ground_truth_is_a_zero_loss_decomposition():
  """On one-feature inputs to a pentagon whose bias cuts all interference, the true components
  are picked by the gradient attributions and reconstruct the target exactly (values >= 0.5 keep
  the active output above its ReLU threshold)."""
  params = _pentagon()
  x = data.exactly_n_active(jax.random.PRNGKey(10), 200, 5, 1, lo=0.5, dtype=jnp.float64)
  cfg = _cfg(C=5, m=1, sparsity="topk", topk=1)
  comps = _ground_truth(params["W"])
  a = apd.attributions(tms.apply, params, comps, x, cfg)
  np.testing.assert_array_equal(jnp.argmax(a, 1), jnp.argmax(x, 1))
  _, met = apd.loss(comps, params, x, None, apply=tms.apply, cfg=cfg)
  assert float(met["faithfulness"]) < 1e-20 and float(met["minimality"]) < 1e-20
  np.testing.assert_allclose(apd.component_use(tms.apply, params, comps, x, cfg),
                             jnp.mean(x != 0, axis=0))


class _MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(6, param_dtype=jnp.float64)(x))
    return nn.Dense(3, param_dtype=jnp.float64)(x)


def test_flax_linen_model_is_decomposed_by_path_pattern():
  model = _MLP()
  x = jax.random.normal(jax.random.PRNGKey(11), (8, 4))
  variables = model.init(jax.random.PRNGKey(12), x)
  cfg = _cfg(C=3, m=2, decompose=(r"params/Dense_\d/kernel",))
  comps = apd.init(jax.random.PRNGKey(13), variables, cfg)
  assert set(comps.factors) == {"params/Dense_0/kernel", "params/Dense_1/kernel"}
  got = apd.attributions(model.apply, variables, comps, x, cfg)
  np.testing.assert_allclose(got, _brute_gradient_attr(model.apply, variables, comps, x),
                             rtol=1e-9)
  loss, met = apd.loss(comps, variables, x, None, apply=model.apply,
                       cfg=_cfg(C=3, m=2, decompose=cfg.decompose, topk=1.0))
  assert np.isfinite(float(loss)) and float(met["active"]) == 1.0


def test_clear_errors():
  params = _pentagon()
  with pytest.raises(ValueError, match="matches no parameter"):
    apd.init(jax.random.PRNGKey(0), params, _cfg(decompose=("encoder",)))
  with pytest.raises(ValueError, match="2-d weights"):
    apd.init(jax.random.PRNGKey(0), params, _cfg(decompose=("b",)))
  comps = apd.init(jax.random.PRNGKey(0), params, _cfg())
  with pytest.raises(AssertionError, match="dimension equal to '5' on axis '-1' but got '4'"):
    apd.loss(comps, params, jnp.ones((3, 4)), None, apply=tms.apply, cfg=_cfg())
  with pytest.raises(ValueError, match="shape"):
    apd.check_components({"W": jnp.ones((2, 6)), "b": jnp.ones(6)}, comps)
  with pytest.raises(ConfigError, match="'topkk'.*'topk'"):
    apd.validate(_cfg(topkk=0.2))
  with pytest.raises(ConfigError, match="attribution"):
    apd.validate(_cfg(attribution="gradients"))
  with pytest.raises(ConfigError, match="'topkk'"):   # init and make_update check cfg too
    apd.init(jax.random.PRNGKey(0), params, _cfg(topkk=0.2))
  with pytest.raises(ConfigError, match="'topkk'"):
    apd.make_update(tms.apply, _cfg(topkk=0.2), lambda k: None, optax.adam(1e-3))


def test_unit_norm_option_normalises_and_projects():
  params = _pentagon()
  cfg = _cfg(unit_norm_matrices=True)
  comps = apd.init(jax.random.PRNGKey(14), params, cfg)
  np.testing.assert_allclose(jnp.linalg.norm(comps.factors["W"].V, axis=1), 1.0, rtol=1e-10)
  x = data.sparse_features(jax.random.PRNGKey(15), 64, 5, 0.3, dtype=jnp.float64)
  grads = jax.grad(lambda c: apd.loss(c, params, x, None, apply=tms.apply, cfg=cfg)[0])(comps)
  proj = apd.project_grads(grads, comps, cfg)
  (g,), (pr,), (w,) = grads.factors.values(), proj.factors.values(), comps.factors.values()
  np.testing.assert_allclose(jnp.sum(pr.V * w.V, axis=1), 0.0, atol=1e-10)
  np.testing.assert_array_equal(pr.U, g.U)
  assert float(jnp.abs(g.V - pr.V).max()) > 1e-6  # it did remove something
  # through the training step: V stays unit-norm after an Adam update
  opt = optax.adam(1e-2)
  update = apd.make_update(tms.apply, cfg, lambda k: x, opt)
  state, _ = update(train.init_state(comps, opt, jax.random.PRNGKey(0)), params)
  np.testing.assert_allclose(jnp.linalg.norm(state.params.factors["W"].V, axis=1), 1.0, rtol=1e-10)
  assert apd.project_grads(grads, comps, _cfg()) is grads


def test_lp_formulation_on_a_linear_layer_is_closed_form():
  """With f = W x, A_c(x) = |P_c x| / sqrt(d_out): both Lp losses follow by hand."""
  params = {"W": jax.random.normal(jax.random.PRNGKey(16), (4, 6))}
  cfg = _cfg(C=3, m=2, formulation="lp", lp_p=0.9, schatten_p=1.0, minimality_coeff=7.0,
             simplicity_coeff=1.0)
  apd.validate(cfg)
  comps = apd.init(jax.random.PRNGKey(17), params, cfg)
  x = jax.random.normal(jax.random.PRNGKey(18), (9, 6))
  total, met = apd.loss(comps, params, x, None, apply=_linear, cfg=cfg)
  mats = lowrank.components(comps.factors["W"])
  a = jnp.linalg.norm(jnp.einsum("cij,bj->bci", mats, x), axis=-1) / 2.0      # [B, C]
  w = comps.factors["W"]
  s = jnp.sum(jnp.sqrt(jnp.sum(w.U**2, 1) * jnp.sum(w.V**2, 1)), -1)  # Schatten p = 1
  np.testing.assert_allclose(met["minimality"], jnp.mean(jnp.sum(a**0.9, 1)), rtol=1e-6)
  np.testing.assert_allclose(met["simplicity"], jnp.mean(a**0.9 @ s) / 24, rtol=1e-6)
  np.testing.assert_allclose(total, met["faithfulness"] + 7 * met["minimality"]
                             + met["simplicity"], rtol=1e-12)
  # the attributions carry gradient in this formulation: compare with a finite difference
  w = comps.factors["W"]
  f = lambda u: apd.loss(apd.State({"W": w._replace(U=u)}), params, x, None, apply=_linear,
                         cfg=cfg)[1]["minimality"]
  g = jax.grad(f)(w.U)
  h = 1e-6
  e = jnp.zeros_like(w.U).at[1, 2, 0].set(h)
  np.testing.assert_allclose(g[1, 2, 0], (f(w.U + e) - f(w.U - e)) / (2 * h), rtol=1e-5)


def _relu_mlp(params, x):
  return jax.nn.relu(x @ params["w1"].T) @ params["w2"].T


def _relu_mlp_kernels(params, x):  # Flax layout: x @ K, so the contracted axis of K is 0
  return jax.nn.relu(x @ params["k1"]) @ params["k2"]


@pytest.mark.parametrize("layout", ["rows", "kernels"])
def test_activation_attribution_by_definition(layout):
  ks = jax.random.split(jax.random.PRNGKey(11), 4)
  w1, w2 = jax.random.normal(ks[0], (6, 4)), jax.random.normal(ks[1], (3, 6))
  if layout == "rows":
    params, apply, names = {"w1": w1, "w2": w2}, _relu_mlp, ("w1", "w2")
  else:
    params, apply, names = {"k1": w1.T, "k2": w2.T}, _relu_mlp_kernels, ("k1", "k2")
  cfg = _cfg(C=5, m=2, decompose=names, attribution="activation")
  comps = apd.init(ks[2], params, cfg)
  x = jax.random.normal(ks[3], (8, 4))
  got = apd.attributions(apply, params, comps, x, cfg)
  p1, p2 = (lowrank.components(comps.factors[n]) for n in names)   # [C, a, b]
  if layout == "kernels":
    p1, p2 = p1.transpose(0, 2, 1), p2.transpose(0, 2, 1)
  # the inputs of each layer in the all-components APD model, then |P_c a|^2 summed over layers
  a1 = x
  a2 = jax.nn.relu(x @ p1.sum(0).T)
  want = (jnp.sum(jnp.einsum("cij,bj->bci", p1, a1) ** 2, -1)
          + jnp.sum(jnp.einsum("cij,bj->bci", p2, a2) ** 2, -1))
  np.testing.assert_allclose(got, want, rtol=1e-10)


def test_hidden_activation_reconstruction_by_definition():
  ks = jax.random.split(jax.random.PRNGKey(12), 4)
  params = {"w1": jax.random.normal(ks[0], (6, 4)), "w2": jax.random.normal(ks[1], (3, 6))}
  cfg = _cfg(C=5, m=2, decompose=("w1", "w2"), topk=2.0, act_recon_coeff=3.0,
             act_recon_layers=("w1",), act_recon_relu=True)
  comps = apd.init(ks[2], params, cfg)
  x = jax.random.normal(ks[3], (8, 4))
  total, m = apd.loss(comps, params, x, None, apply=_relu_mlp, cfg=cfg)
  mask = apd.mask_from(apd.attributions(_relu_mlp, params, comps, x, cfg), cfg)
  w1_b = lowrank.masked_total(comps.factors["w1"], mask)                    # [B, 6, 4]
  sparse = jax.nn.relu(jnp.einsum("bij,bj->bi", w1_b, x))
  target = jax.nn.relu(x @ params["w1"].T)
  np.testing.assert_allclose(m["act_recon"], jnp.mean(jnp.sum((sparse - target) ** 2, -1)) / 6,
                             rtol=1e-10)
  no_act, m0 = apd.loss(comps, params, x, None, apply=_relu_mlp,
                        cfg=_cfg(**{**cfg.to_dict(), "act_recon_coeff": 0.0}))
  assert "act_recon" not in m0
  np.testing.assert_allclose(total - no_act, 3.0 * m["act_recon"], rtol=1e-10)
  # all decomposed layers, no ReLU: the pre-activations of both products are matched
  cfg_all = _cfg(**{**cfg.to_dict(), "act_recon_layers": (), "act_recon_relu": False})
  _, m_all = apd.loss(comps, params, x, None, apply=_relu_mlp, cfg=cfg_all)
  pre = jnp.einsum("bij,bj->bi", w1_b, x)
  out2 = jnp.einsum("bij,bj->bi", lowrank.masked_total(comps.factors["w2"], mask), jax.nn.relu(pre))
  t2 = jax.nn.relu(x @ params["w1"].T) @ params["w2"].T
  want = jnp.mean(jnp.sum((pre - x @ params["w1"].T) ** 2, -1) + jnp.sum((out2 - t2) ** 2, -1))
  np.testing.assert_allclose(m_all["act_recon"], want / 9, rtol=1e-10)


def test_exact_topk_and_distil_from_target_masks():
  scores = jax.random.uniform(jax.random.PRNGKey(13), (6, 5))
  x = jnp.zeros((6, 4)).at[0, 1].set(1.0).at[2, :3].set(0.5).at[5, 3].set(-0.2)   # 5 nonzero
  mask = apd.mask_from(scores, _cfg(C=5, exact_topk=True), x)
  assert mask.sum() == 5
  np.testing.assert_array_equal(np.sort(np.asarray(scores[mask > 0])),
                                np.sort(np.asarray(scores).ravel())[-5:])
  # distil: the last component is always on, the others are chosen among themselves
  d = apd.mask_from(scores, _cfg(C=5, topk=1.0, distil_from_target=True))
  np.testing.assert_array_equal(d[:, -1], 1.0)
  np.testing.assert_array_equal(d[:, :-1], apd.mask_from(scores[:, :-1], _cfg(C=4, topk=1.0)))
  with pytest.raises(ValueError, match="pass x"):
    apd.mask_from(scores, _cfg(C=5, exact_topk=True))


def test_state_round_trips_through_a_checkpoint(tmp_path):
  """Orbax restores into the structure it is given: the trained State (and the Adam moments,
  States too) come back as `apd.State`, value for value."""
  params = _pentagon()
  opt = optax.adam(1e-2)
  state = train.init_state(apd.init(jax.random.PRNGKey(0), params, _cfg()), opt,
                           jax.random.PRNGKey(1))
  x = data.sparse_features(jax.random.PRNGKey(2), 32, 5, 0.3, dtype=jnp.float64)
  state, _ = apd.make_update(tms.apply, _cfg(), lambda k: x, opt)(state, params)
  ck = Checkpointer(str(tmp_path))
  ck.save(1, state)
  ck.wait()
  like = train.init_state(apd.init(jax.random.PRNGKey(5), params, _cfg()), opt,
                          jax.random.PRNGKey(1))
  back = ck.restore(like, 1)
  ck.close()
  assert isinstance(back.params, apd.State) and isinstance(back.opt_state[0].mu, apd.State)
  assert jax.tree.structure(back) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)
