"""APD on logits: the KL minimality, attributions on log-probabilities, the per-weight
faithfulness norms (docs/methods/apd.md §1.5), and the runner's classifier plan."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paramdecomp.core import lowrank, pytree, train
from paramdecomp.core.config import ConfigError
from paramdecomp.core.lowrank import Factors
from paramdecomp.methods import apd


def _cfg(**kw):
  c = apd.default_config()
  c.update(kw)
  return c


def _linear(params, x):   # logits [..., K] of a linear softmax model, W [K, d]
  return x @ params["W"].T


def _np_kl(t, s):
  """KL(softmax(t) || softmax(s)) per row, in numpy (the closed form)."""
  t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
  lt = t - t.max(-1, keepdims=True)
  lt = lt - np.log(np.exp(lt).sum(-1, keepdims=True))
  ls = s - s.max(-1, keepdims=True)
  ls = ls - np.log(np.exp(ls).sum(-1, keepdims=True))
  return (np.exp(lt) * (lt - ls)).sum(-1)


@pytest.mark.parametrize("seq", [False, True])
def test_kl_minimality_of_a_linear_softmax_model_is_closed_form(seq):
  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  K, d, B, T = 4, 6, 8, 3
  params = {"W": jax.random.normal(ks[0], (K, d))}
  cfg = _cfg(C=3, m=2, sparsity="topk", topk=1, minimality_divergence="kl")
  comps = apd.init(ks[1], params, cfg)
  x = jax.random.normal(ks[2], (B, T, d) if seq else (B, d))
  _, met = apd.loss(comps, params, x, None, apply=_linear, cfg=cfg)
  # by hand: sample b runs with the one component of largest attribution
  mask = np.asarray(apd.mask_from(apd.attributions(_linear, params, comps, x, cfg), cfg, x))
  assert (mask.sum(1) == 1).all()
  mats = np.asarray(lowrank.components(comps.factors["W"]))            # [C, K, d]
  xs = np.asarray(x).reshape(B, -1, d)
  w_s = np.einsum("bc,ckd->bkd", mask, mats)
  y_s = np.einsum("btd,bkd->btk", xs, w_s)
  y_t = xs @ np.asarray(params["W"]).T
  want = _np_kl(y_t, y_s).mean()       # over the batch and the positions
  np.testing.assert_allclose(met["minimality"], want, rtol=1e-10)
  assert want > 1e-3    # a real difference, not a trivially zero case
  np.testing.assert_allclose(apd.divergence(jnp.asarray(y_s), jnp.asarray(y_t), "kl"), want,
                             rtol=1e-10)


def test_kl_and_faithfulness_are_zero_at_a_perfect_decomposition():
  # W's columns as rank-one components; each input has one active feature, so its own column's
  # component is the only one with a nonzero attribution and top-1 reproduces the target
  K, d = 3, 4
  w = jax.random.normal(jax.random.PRNGKey(1), (K, d))
  params = {"W": w}
  eye = jnp.eye(d)
  comps = apd.State({"W": Factors(jnp.transpose(w)[:, :, None], eye[:, :, None])})
  x = jnp.eye(d)[jnp.array([0, 1, 2, 3, 2, 0])] * jnp.array([[1.0], [2], [-1], [0.5], [3], [1]])
  for norm in apd.FAITHFULNESS_NORMS:
    cfg = _cfg(C=d, m=1, sparsity="topk", topk=1, minimality_divergence="kl",
               attribution_output="log_probs", faithfulness_norm=norm)
    _, met = apd.loss(comps, params, x, None, apply=_linear, cfg=cfg)
    assert abs(float(met["faithfulness"])) < 1e-28
    assert abs(float(met["minimality"])) < 1e-14
  # and a wrong selection is not zero: the all-but-one mask changes the logits
  wrong = apd.masked_apply(_linear, params, comps, 1 - jnp.eye(d)[jnp.array([0, 1, 2, 3, 2, 0])],
                           x)
  assert float(apd.divergence(wrong, _linear(params, x), "kl")) > 1e-2


def test_faithfulness_norms_by_hand():
  # W1 = ones [2, 3], W2 = 3 * ones [4, 5]; sum P misses W1 by 0.5 everywhere, W2 by 2 at one
  # entry: |dW1|^2 = 1.5, |dW2|^2 = 4, |W1|^2 = 6, |W2|^2 = 180, n = 6 and 20
  w1, w2 = jnp.ones((2, 3)), 3.0 * jnp.ones((4, 5))
  params = {"a": w1, "b": w2}
  p1, p2 = w1 - 0.5, w2.at[2, 1].add(-2.0)
  # one full-rank component each: U = the matrix, V = identity, so P = U V^T = the matrix
  comps = {"a": Factors(p1[None], jnp.eye(3)[None]), "b": Factors(p2[None], jnp.eye(5)[None])}
  want = {"entries": 5.5 / 26, "per_weight": (1.5 / 6 + 4 / 20) / 2,
          "relative": (1.5 / 6 + 4 / 180) / 2}
  for norm, v in want.items():
    np.testing.assert_allclose(apd.faithfulness(params, comps, norm), v, rtol=1e-12)
    # and the loss reports the same
    x = jnp.ones((2, 8))
    cfg = _cfg(C=1, m=0, decompose=("a", "b"), sparsity="topk", topk=1, faithfulness_norm=norm)
    apply = lambda p, x: jnp.concatenate([x[:, :3] @ p["a"].T, x[:, 3:] @ p["b"].T], axis=1)
    _, met = apd.loss(apd.State(comps), params, x, None, apply=apply, cfg=cfg)
    np.testing.assert_allclose(met["faithfulness"], v, rtol=1e-12)
  # one weight: per-weight and entries agree
  one = {"a": comps["a"]}
  np.testing.assert_allclose(apd.faithfulness(params, one, "per_weight"),
                             apd.faithfulness(params, one, "entries"), rtol=1e-14)


def test_log_prob_attribution_matches_jacrev_and_ignores_a_logit_shift():
  ks = jax.random.split(jax.random.PRNGKey(2), 3)
  K, d = 5, 4
  params = {"W": jax.random.normal(ks[0], (K, d))}
  v = jax.random.normal(ks[1], (d,))
  shift = jnp.ones(K)[:, None] * v[None, :]      # adds v.x to every logit alike
  rand = jax.random.normal(ks[2], (K, d))
  comps = apd.State({"W": Factors(jnp.stack([shift, rand]), jnp.stack([jnp.eye(d)] * 2))})
  x = jax.random.normal(ks[0], (6, d))
  cfg = _cfg(C=2, m=0, attribution_output="log_probs")
  got = apd.attributions(_linear, params, comps, x, cfg)
  # brute force: the jacobian of the log-probabilities with respect to W
  logp = lambda w: jax.nn.log_softmax(_linear({"W": w}, x), axis=-1)
  jac = jax.jacrev(logp)(params["W"])                                  # [B, K, K, d]
  mats = lowrank.components(comps.factors["W"])
  want = jnp.sqrt(jnp.mean(jnp.einsum("boij,cij->bco", jac, mats) ** 2, axis=-1))
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
  assert float(jnp.max(got[:, 0])) < 1e-7 and float(jnp.min(got[:, 1])) > 1e-3
  raw = apd.attributions(_linear, params, comps, x, _cfg(C=2, m=0))
  assert float(jnp.min(raw[:, 0])) > 1e-3      # on raw logits the shift counts
  # ablation attributions on log-probabilities do not see the shift either
  abl = apd.attributions(_linear, params, comps, x,
                         _cfg(C=2, m=0, attribution="ablation", attribution_output="log_probs"))
  assert float(jnp.max(abl[:, 0])) < 1e-20 and float(jnp.min(abl[:, 1])) > 1e-6


def test_kl_options_are_checked():
  with pytest.raises(ConfigError, match="minimality_divergence"):
    apd.validate(_cfg(minimality_divergence="ce"))
  with pytest.raises(ConfigError, match="faithfulness_norm"):
    apd.validate(_cfg(faithfulness_norm="max"))
  with pytest.raises(ConfigError, match="attribution_output"):
    apd.validate(_cfg(attribution_output="probs"))
  with pytest.raises(ConfigError, match="lp formulation"):
    apd.validate(_cfg(formulation="lp", minimality_divergence="kl"))


def _teacher(params, x):   # a fixed random ReLU MLP classifier [B, 12] -> logits [B, 5]
  h = jax.nn.relu(x @ params["l1"]["kernel"] + params["l1"]["bias"])
  return h @ params["l2"]["kernel"]


def test_classifier_setting_trains_components_to_the_kernels():
  ks = jax.random.split(jax.random.PRNGKey(3), 4)
  params = {"l1": {"kernel": jax.random.normal(ks[0], (12, 24)) / np.sqrt(12),
                   "bias": 0.1 * jax.random.normal(ks[1], (24,))},
            "l2": {"kernel": 3 * jax.random.normal(ks[2], (24, 5)) / np.sqrt(24)}}
  cfg = _cfg(decompose=(r"l\d/kernel",), C=6, m=0, topk=2.0, minimality_divergence="kl",
             attribution_output="log_probs", faithfulness_norm="relative",
             faithfulness_coeff=100.0, simplicity_coeff=0.1, schatten_p=0.9)
  data = jax.random.uniform(ks[3], (512, 12))
  batch_fn = lambda k, d: d[jax.random.choice(k, d.shape[0], (64,), replace=False)]
  opt = optax.adam(3e-3)
  state = train.init_state(apd.init(ks[0], params, cfg), opt, ks[1])
  ws = pytree.get(params, list(state.params.factors))

  def rel_err(s):
    num = sum(jnp.sum((ws[p] - lowrank.total(f)) ** 2) for p, f in s.factors.items())
    return float(jnp.sqrt(num / sum(jnp.sum(w ** 2) for w in ws.values())))

  def topk_kl(s, x):
    mask = apd.mask_from(apd.attributions(_teacher, params, s, x, cfg), cfg, x)
    return float(apd.divergence(apd.masked_apply(_teacher, params, s, mask, x),
                                _teacher(params, x), "kl"))

  x = data[:256]
  before, kl_before = rel_err(state.params), topk_kl(state.params, x)
  state = train.fit(state, train.Frozen(params, data), apd.make_update(_teacher, cfg, batch_fn,
                                                                          opt),
                    total_steps=300, workdir=None, steps_per_dispatch=100, log_every=0,
                    quiet=True)
  after, kl_after = rel_err(state.params), topk_kl(state.params, x)
  assert before > 0.5 and after < 0.03, (before, after)
  # two components of six per sample already carry most of the target's predictions
  assert kl_after < 0.5 * kl_before, (kl_before, kl_after)   # measured: 0.21 -> 0.06


def test_runner_plan_draws_a_classifiers_batches_from_its_training_inputs():
  from paramdecomp.runs import decompose_apd
  from paramdecomp.runs.targets import default_config as target_config
  from paramdecomp.toy_models import digits_mlp, registry
  target = registry.get("digits_mlp")
  tcfg = target_config()
  tcfg.model, tcfg.data = digits_mlp.model_config(hidden=(8,)), digits_mlp.data_config()
  raw = digits_mlp.init(jax.random.PRNGKey(0), tcfg.model)
  c = decompose_apd.default_config()
  c.batch_size = 32
  p = decompose_apd.plan(c, target, tcfg, raw, jax.random.PRNGKey(1))
  train_x = np.asarray(target.dataset(tcfg)["train_x"])
  np.testing.assert_array_equal(np.asarray(p.data), train_x)
  xb = np.asarray(p.batch_fn(jax.random.PRNGKey(2), p.data))
  assert xb.shape == (32, 64)
  rows = {r.tobytes() for r in train_x}
  assert all(r.tobytes() in rows for r in xb)
  assert len({r.tobytes() for r in xb}) == 32    # distinct rows: drawn without replacement
  assert not np.array_equal(xb, np.asarray(p.batch_fn(jax.random.PRNGKey(3), p.data)))
