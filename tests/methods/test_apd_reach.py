"""APD on weights that do not enter a plain 2-d product: conv kernels, embedding tables read by a
lookup, leaves reshaped before use, DenseGeneral and attention kernels (issue 12 items 1, 9).

Each is decomposed in its matrix view [a, b] (the leaf is its row-major reshape). The oracles:
gradient attributions from `jax.jacrev` on the dense weight in its view, activation attributions
from each layer's input (caught with `nn.intercept_methods`) times P_c, written out by hand
(explicit patches for a conv, one-hot rows for a lookup).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paramdecomp.core import lowrank, pytree, train
from paramdecomp.core.factored import UnsupportedUse
from paramdecomp.methods import apd

F64 = dict(param_dtype=jnp.float64)


def _cfg(**kw):
  c = apd.default_config()
  c.update(dict(C=3, m=2), **kw)
  return c


class _CNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), **F64)(x))                               # [B, 8, 8, 4]
    x = nn.Conv(3, (3, 3), strides=2, padding="VALID", **F64)(x)            # [B, 3, 3, 3]
    return nn.Dense(2, **F64)(x.reshape(x.shape[0], -1))


class _Embedder(nn.Module):
  @nn.compact
  def __call__(self, ids):
    emb = nn.Embed(11, 6, **F64)
    return emb.attend(jnp.tanh(emb(ids))).sum(axis=1)                       # [B, 11]


class _DenseGeneral(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = jnp.tanh(nn.DenseGeneral((2, 3), **F64)(x))                        # [B, 2, 3]
    return nn.DenseGeneral(4, axis=(-2, -1), **F64)(h)


class _Attention(nn.Module):
  @nn.compact
  def __call__(self, x):
    y = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, **F64)(x, x)
    return y.mean(axis=1)                                                   # [B, 6]


class _Reshaped(nn.Module):
  """Leaves reshaped before a product: a flat one into a column-vector layer, a 3-d one into a
  Flax-style kernel."""
  @nn.compact
  def __call__(self, x):
    w = self.param("w", nn.initializers.normal(0.5), (24,), jnp.float64)
    k = self.param("k", nn.initializers.normal(0.5), (2, 3, 4), jnp.float64)
    return jnp.tanh(w.reshape(4, 6) @ x.T).T @ k.reshape(4, 6)


def _cases():
  ks = jax.random.split(jax.random.PRNGKey(0), 5)
  ids = jax.random.randint(ks[1], (5, 4), 0, 11)
  for name, model, x, pats in (
      ("cnn", _CNN(), jax.random.normal(ks[0], (5, 8, 8, 1)), (r".*kernel",)),
      ("embedding", _Embedder(), ids, (r".*embedding",)),
      ("dense_general", _DenseGeneral(), jax.random.normal(ks[2], (5, 5)), (r".*kernel",)),
      ("attention", _Attention(), jax.random.normal(ks[3], (5, 4, 6)), (r".*kernel",)),
      ("reshaped", _Reshaped(), jax.random.normal(ks[4], (5, 6)), ("params/w", "params/k"))):
    yield name, model, model.init(jax.random.PRNGKey(1), x), x, pats


CASES = list(_cases())
IDS = [c[0] for c in CASES]


def _init(model, params, x, pats, **kw):
  cfg = _cfg(decompose=pats, **kw)
  return apd.init(jax.random.PRNGKey(2), params, cfg, apply=model.apply, x=x), cfg


def _factors(state):
  """{path: Factors} of an apd.State (the helpers below read the factors)."""
  return state.factors if isinstance(state, apd.State) else state


def _with_totals(params, comps):
  comps = _factors(comps)
  ws = pytree.get(params, list(comps))
  return pytree.replace(params, {p: lowrank.total(f).reshape(ws[p].shape)
                                 for p, f in comps.items()})


def _oracle_gradient(apply, params, comps, x):
  """[B, C] sqrt(mean_o (sum_l <d f_o / d W_l, P_c,l>)^2), the jacobian taken on each weight in
  its matrix view."""
  comps = _factors(comps)
  ws = pytree.get(params, list(comps))
  views = {p: w.reshape(lowrank.view(comps[p])) for p, w in ws.items()}
  f = lambda vs: apply(pytree.replace(params, {p: v.reshape(ws[p].shape)
                                               for p, v in vs.items()}), x)
  jac = jax.jacrev(f)(views)                                                 # [B, *out, a, b]
  b = x.shape[0]
  dots = sum(jnp.einsum("boij,cij->bco", jac[p].reshape((b, -1) + views[p].shape),
                        lowrank.components(comps[p])) for p in comps)
  return jnp.sqrt(jnp.mean(dots**2, axis=-1))


GRADIENT_CASES = [(c, "target") for c in CASES] + [(c, "apd") for c in CASES if c[0] in (
    "embedding", "attention")]   # the APD model's gradients: a tied lookup and the attention


@pytest.mark.parametrize("case,which", GRADIENT_CASES, ids=[f"{c[0]}-{w}" for c, w in
                                                             GRADIENT_CASES])
def test_gradient_attributions_equal_the_jacobian_oracle(case, which):
  name, model, params, x, pats = case
  comps, cfg = _init(model, params, x, pats, attribution_model=which)
  base = params if which == "target" else _with_totals(params, comps)
  got = apd.attributions(model.apply, params, comps, x, cfg)
  want = _oracle_gradient(model.apply, base, comps, x)
  assert float(jnp.min(jnp.max(want, axis=0))) > 1e-3  # every component counts somewhere
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def _layer_inputs(model, params, x):
  """[(module, method name, its input)] for every Conv / Dense / DenseGeneral / Embed call."""
  seen = []

  def catch(next_fun, args, kwargs, ctx):
    if isinstance(ctx.module, (nn.Conv, nn.Dense, nn.DenseGeneral, nn.Embed)) and (
        ctx.method_name in ("__call__", "attend")):
      seen.append((ctx.module, ctx.method_name, args[0]))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(catch):
    model.apply(params, x)
  return seen


def _explicit_patches(x, module):
  """[B, H', W', kh*kw*I] patches of an NHWC input in HWI order, sliced out by hand."""
  kh, kw = module.kernel_size
  sh, sw = module.strides if isinstance(module.strides, tuple) else (module.strides or 1,) * 2
  if module.padding == "SAME":
    x = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  rows = [[x[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :].reshape(x.shape[0], -1)
           for j in range(wo)] for i in range(ho)]
  return jnp.stack([jnp.stack(r, 1) for r in rows], 1)


def _oracle_activation(model, params, comps, x):
  """[B, C] sum over decomposed products of |P_c a|^2 over positions, a = the layer's input in
  the all-components model, the product written out per layer kind."""
  comps = _factors(comps)
  seen = _layer_inputs(model, _with_totals(params, comps), x)
  total = 0.0
  for module, method, a in seen:
    leaf = "embedding" if isinstance(module, nn.Embed) else "kernel"
    path = "/".join(("params",) + tuple(module.scope.path) + (leaf,))
    if path not in comps:
      continue
    mats = lowrank.components(comps[path])                                  # [C, a, b]
    b = a.shape[0]
    if isinstance(module, nn.Conv):
      a = _explicit_patches(a, module)
    elif method == "__call__" and isinstance(module, nn.Embed):
      a = jax.nn.one_hot(a, mats.shape[1], dtype=mats.dtype)                 # one-hot rows
    if method == "attend":
      y = jnp.einsum("b...j,cij->cb...i", a, mats)                          # a @ P_c^T
    else:
      y = jnp.einsum("bk,ckj->cbj", a.reshape(-1, mats.shape[1]), mats).reshape(
          mats.shape[0], b, -1)
    total = total + jnp.sum(y.reshape(y.shape[0], b, -1) ** 2, axis=-1).T
  return total


@pytest.mark.parametrize("name,model,params,x,pats", CASES[:4], ids=IDS[:4])
def test_activation_attributions_equal_the_written_out_products(name, model, params, x, pats):
  comps, cfg = _init(model, params, x, pats, attribution="activation")
  got = apd.attributions(model.apply, params, comps, x, cfg)
  want = _oracle_activation(model, params, comps, x)
  assert float(jnp.min(want)) > 1e-6
  np.testing.assert_allclose(got, want, rtol=1e-10)


def test_activation_attributions_of_reshaped_leaves_equal_the_written_out_products():
  name, model, params, x, pats = CASES[4]
  comps, cfg = _init(model, params, x, pats, attribution="activation")
  got = apd.attributions(model.apply, params, comps, x, cfg)
  pw, pk = (lowrank.components(comps.factors["params/w"]),
            lowrank.components(comps.factors["params/k"]))
  h = jnp.tanh(x @ pw.sum(0).T)                       # the second product's input, [B, 4]
  want = (jnp.sum(jnp.einsum("bj,cij->cbi", x, pw) ** 2, -1)
          + jnp.sum(jnp.einsum("bi,cij->cbj", h, pk) ** 2, -1)).T
  np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize("name,model,params,x,pats", CASES, ids=IDS)
def test_masked_forward_equals_dense_per_sample(name, model, params, x, pats):
  comps, cfg = _init(model, params, x, pats)
  mask = jax.random.bernoulli(jax.random.PRNGKey(3), 0.6, (x.shape[0], cfg.C)).astype(
      jnp.float64)
  got = apd.masked_apply(model.apply, params, comps, mask, x)
  ws = pytree.get(params, list(comps.factors))
  for b in range(x.shape[0]):
    wb = {p: lowrank.masked_total(f, mask[b]).reshape(ws[p].shape)
          for p, f in comps.factors.items()}
    np.testing.assert_allclose(got[b], model.apply(pytree.replace(params, wb), x[b:b + 1])[0],
                               rtol=1e-10, atol=1e-12)
  # the faithfulness term compares each leaf with its components in the leaf's own shape
  loss, met = apd.loss(comps, params, x, None, apply=model.apply, cfg=cfg)
  n = sum(w.size for w in ws.values())
  want = sum(jnp.sum((ws[p] - lowrank.total(f).reshape(ws[p].shape)) ** 2)
             for p, f in comps.factors.items()) / n
  np.testing.assert_allclose(met["faithfulness"], want, rtol=1e-12)
  assert np.isfinite(float(loss))


def test_attention_views_follow_the_model_and_the_default_view_raises_naming_the_path():
  name, model, params, x, pats = CASES[3]
  comps, cfg = _init(model, params, x, pats)
  pre = "params/MultiHeadDotProductAttention_0/"
  assert {p: lowrank.view(f) for p, f in comps.factors.items()} == {
      pre + "key/kernel": (6, 8), pre + "out/kernel": (8, 6), pre + "query/kernel": (6, 8),
      pre + "value/kernel": (6, 8)}
  # without the model, a [d, heads, d_head] kernel gets the (d*heads, d_head) default view,
  # which is no product of the model: the attribution refuses, naming the weight
  blind = apd.init(jax.random.PRNGKey(2), params, cfg)
  assert lowrank.view(blind.factors[pre + "query/kernel"]) == (12, 4)
  with pytest.raises(UnsupportedUse, match=r"'params/.*/(key|query|value)/kernel'.*apply= and x="):
    apd.attributions(model.apply, params, blind, x, cfg)


def test_a_use_it_cannot_attribute_raises_and_ablation_still_works():
  def apply(p, x):  # the kernel also enters a weight-norm, an elementwise use
    return x @ p["K"] / jnp.sqrt(jnp.sum(p["K"] ** 2))

  params = {"K": jax.random.normal(jax.random.PRNGKey(4), (5, 3))}
  x = jax.random.normal(jax.random.PRNGKey(5), (4, 5))
  cfg = _cfg(decompose=("K",))
  comps = apd.init(jax.random.PRNGKey(6), params, cfg)
  for attribution in ("gradient", "activation"):
    with pytest.raises(UnsupportedUse, match="'K'.*integer_pow.*ablation"):
      apd.attributions(apply, params, comps, x, _cfg(decompose=("K",), attribution=attribution))
  got = apd.attributions(apply, params, comps, x, _cfg(decompose=("K",), attribution="ablation"))
  assert got.shape == (4, 3) and bool(jnp.all(jnp.isfinite(got)))


@pytest.mark.parametrize("case", ["cnn", "attention"])
def test_a_short_apd_run_trains_conv_and_attention_components(case, tmp_path):
  name, model, params, x, pats = CASES[IDS.index(case)]
  comps, cfg = _init(model, params, x, pats, topk=1.0)
  shape = x.shape[1:]
  batch_fn = lambda k: jax.random.normal(k, (8,) + shape)
  opt = optax.adam(1e-3)
  update = apd.make_update(model.apply, cfg, batch_fn, opt)
  state = train.fit(train.init_state(comps, opt, jax.random.PRNGKey(7)), params, update,
                    total_steps=20, workdir=None, log_every=0, steps_per_dispatch=10, quiet=True)
  assert int(state.step) == 20
  loss, _ = apd.loss(state.params, params, x, None, apply=model.apply, cfg=cfg)
  assert np.isfinite(float(loss))
  for p, f in state.params.factors.items():  # each layer alone: its components are seen
    a = apd.attributions(model.apply, params, apd.State({p: f}), x, cfg)
    assert float(jnp.min(jnp.max(a, axis=0))) > 1e-4, p
