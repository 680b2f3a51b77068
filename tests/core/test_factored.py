"""apply_factored must equal apply on the dense weight, whatever the model does with it."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paramdecomp.core import pytree
from jax import lax

from paramdecomp.core.factored import UnsupportedUse, apply_factored, matrix_views, trace_matmuls
from paramdecomp.core.lowrank import LowRank
from paramdecomp.toy_models import tms


def _lr(key, a, b, r=3, scaled=True):
  k1, k2, k3 = jax.random.split(key, 3)
  g = jax.random.normal(k3, (r,)) if scaled else None
  return LowRank(jax.random.normal(k1, (a, r)), jax.random.normal(k2, (b, r)), g)


def _column_style(params, x):
  """W @ x^T with W as the left operand, an elementwise use of W, and a nested jit."""
  h = jnp.tanh(params["W"] @ x.T)                       # [a, B]
  return jax.jit(lambda h, w: (w.T @ h).T)(h, params["W"]) + jnp.sum(params["W"] ** 2)


class _Conv(nn.Module):
  @nn.compact
  def __call__(self, x):
    # SAME padding: [B, 6, 4]; the conv kernel is never factored
    x = nn.Conv(4, (3,), param_dtype=jnp.float64)(x)
    return nn.Dense(2, param_dtype=jnp.float64)(x.reshape(x.shape[0], -1))


def _cases():
  k = jax.random.split(jax.random.PRNGKey(0), 4)
  yield ("tms_tied", tms.apply,
         {"W": jnp.zeros((3, 7)), "b": jax.random.normal(k[0], (7,)),
          "hidden": 1.3 * jnp.eye(3)[None]},
         {"W": _lr(k[1], 3, 7)}, jax.random.normal(k[2], (5, 7)))
  yield ("column_style", _column_style, {"W": jnp.zeros((4, 6))}, {"W": _lr(k[1], 4, 6)},
         jax.random.normal(k[2], (5, 6)))
  model = _Conv()
  x = jax.random.normal(k[3], (5, 6, 2))
  v = model.init(k[0], x)
  yield ("flax_conv_dense", model.apply, v,
         {"params/Dense_0/kernel": _lr(k[1], 24, 2, scaled=False)}, x)


@pytest.mark.parametrize("name,apply,params,factors,x", list(_cases()), ids=lambda v: None)
def test_factored_equals_dense_values_and_gradients(name, apply, params, factors, x):
  dense = lambda fs: apply(pytree.replace(params, {p: f.dense() for p, f in fs.items()}), x)
  _assert_factored_is_dense(apply, params, factors, x, dense, (1e-10, 1e-12), (1e-9, 1e-12))


def _assert_factored_is_dense(apply, params, factors, x, dense, tol_values, tol_grads):
  """apply_factored equals `dense(factors)` in value and in the gradient of a nonlinear sum."""
  np.testing.assert_allclose(apply_factored(apply, params, factors, x), dense(factors),
                             rtol=tol_values[0], atol=tol_values[1])
  g1 = jax.grad(lambda fs: jnp.sum(jnp.sin(apply_factored(apply, params, fs, x))))(factors)
  g2 = jax.grad(lambda fs: jnp.sum(jnp.sin(dense(fs))))(factors)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=tol_grads[0], atol=tol_grads[1])


def test_vmapped_per_sample_scales_equal_per_sample_dense():
  k = jax.random.split(jax.random.PRNGKey(1), 4)
  params = {"W": jnp.zeros((3, 7)), "b": jax.random.normal(k[0], (7,))}
  base = _lr(k[1], 3, 7, r=5, scaled=False)
  g = jax.random.bernoulli(k[2], 0.5, (6, 5)).astype(jnp.float64)
  x = jax.random.normal(k[3], (6, 7))
  got = jax.vmap(lambda gb, xb: apply_factored(
      tms.apply, params, {"W": base._replace(g=gb)}, xb[None])[0])(g, x)
  for b in range(6):
    w = base._replace(g=g[b]).dense()
    np.testing.assert_allclose(got[b], tms.apply({**params, "W": w}, x[b:b + 1])[0], rtol=1e-10)


def test_trace_matmuls_reports_inputs_outputs_and_orientation():
  ks = jax.random.split(jax.random.PRNGKey(5), 3)
  params = {"W": jax.random.normal(ks[0], (3, 5)), "K": jax.random.normal(ks[1], (3, 2))}
  x = jax.random.normal(ks[2], (4, 5))

  def apply(p, x):  # W used twice (tied, once transposed); K as a Flax kernel inside a jit
    h = x @ p["W"].T
    r = jax.jit(lambda k, h: jnp.tanh(h) @ k)(p["K"], h)
    return h @ p["W"], r

  low = LowRank(jax.random.normal(ks[0], (3, 2)), jax.random.normal(ks[1], (5, 2)))
  for factors in ({}, {"W": low}):
    w = factors["W"].dense() if factors else params["W"]
    (y, r), uses = trace_matmuls(apply, params, factors, x, ["W", "K"])
    h = x @ w.T
    np.testing.assert_allclose(y, h @ w, rtol=1e-10)
    (u1, u2), (uk,) = uses["W"], uses["K"]
    assert (u1.axis, u2.axis, uk.axis) == (1, 0, 0)
    np.testing.assert_allclose(u1.act, x, rtol=1e-12)
    np.testing.assert_allclose(u1.out, h, rtol=1e-10)
    np.testing.assert_allclose(u2.act, h, rtol=1e-12)
    np.testing.assert_allclose(uk.act, jnp.tanh(h), rtol=1e-12)
    np.testing.assert_allclose(uk.out, r, rtol=1e-10)
  with pytest.raises(KeyError, match="cannot watch"):
    trace_matmuls(apply, params, {}, x, ["V"])


# ---- matrix views: leaves that meet a product other than a plain 2-d one ----------------------

F64 = dict(param_dtype=jnp.float64)


class _CNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), **F64)(x))                               # SAME: [B, 8, 8, 4]
    x = nn.Conv(3, (3, 3), strides=2, padding="VALID", **F64)(x)            # [B, 3, 3, 3]
    return nn.Dense(2, **F64)(x.reshape(x.shape[0], -1))


def _nchw_conv(p, x):
  """A PyTorch-layout conv: kernel OIHW on NCHW input, dilated and padded."""
  return lax.conv_general_dilated(x, p["K"], (1, 2), ((2, 1), (0, 1)), rhs_dilation=(2, 1),
                                  dimension_numbers=("NCHW", "OIHW", "NCHW"))


class _Embedder(nn.Module):
  """A lookup by nn.Embed, the tied unembedding (a product with E^T) and a column lookup."""
  @nn.compact
  def __call__(self, ids):
    emb = nn.Embed(11, 6, **F64)
    h = jnp.tanh(emb(ids))                                                  # [B, T, 6]
    cols = self.param("cols", nn.initializers.normal(1.0), (6, 11), jnp.float64)
    return emb.attend(h) + jnp.take(cols, ids, axis=1).transpose(1, 2, 0) @ jnp.ones((6, 11))


def _reshaped(p, x):
  """A flat leaf reshaped into a column-vector layer, a 3-d leaf reshaped into a kernel."""
  h = jnp.tanh(p["w"].reshape(4, 6) @ x.T).T                                # [B, 4]
  return h @ p["k"].reshape(4, 6) @ p["k3"].reshape(20, 6).T                 # [B, 20]


class _DenseGeneral(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = jnp.tanh(nn.DenseGeneral((2, 3), **F64)(x))                        # [B, 2, 3]
    return nn.DenseGeneral(4, axis=(-2, -1), **F64)(h)                      # [B, 4]


class _Attention(nn.Module):
  @nn.compact
  def __call__(self, x):
    y = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, **F64)(x, x)
    return y.mean(axis=1)


def _view_cases():
  k = jax.random.split(jax.random.PRNGKey(7), 6)
  x = jax.random.normal(k[0], (3, 8, 8, 1))
  v = _CNN().init(k[1], x)
  yield ("cnn", _CNN().apply, v, x,
         {"params/Conv_0/kernel": (9, 4), "params/Conv_1/kernel": (36, 3),
          "params/Dense_0/kernel": (27, 2)})
  yield ("nchw_conv", _nchw_conv, {"K": jax.random.normal(k[1], (5, 2, 3, 2))},
         jax.random.normal(k[2], (3, 2, 9, 7)), {"K": (5, 12)})
  ids = jax.random.randint(k[3], (3, 4), 0, 11)
  yield ("embed", _Embedder().apply, _Embedder().init(k[1], ids), ids,
         {"params/Embed_0/embedding": (11, 6), "params/cols": (6, 11)})
  p = {"w": jax.random.normal(k[1], (24,)), "k": jax.random.normal(k[2], (2, 3, 4)),
       "k3": jax.random.normal(k[3], (2, 60))}
  yield ("reshaped", _reshaped, p, jax.random.normal(k[4], (3, 6)),
         {"w": (4, 6), "k": (4, 6), "k3": (20, 6)})
  x = jax.random.normal(k[4], (3, 5))
  yield ("dense_general", _DenseGeneral().apply, _DenseGeneral().init(k[1], x), x,
         {"params/DenseGeneral_0/kernel": (5, 6), "params/DenseGeneral_1/kernel": (6, 4)})
  x = jax.random.normal(k[5], (3, 4, 6))
  pre = "params/MultiHeadDotProductAttention_0/"
  yield ("attention", _Attention().apply, _Attention().init(k[1], x), x,
         {pre + "query/kernel": (6, 8), pre + "key/kernel": (6, 8), pre + "value/kernel": (6, 8),
          pre + "out/kernel": (8, 6)})


VIEW_CASES = list(_view_cases())


def _factors_for(views, key, r):
  out = {}
  for i, (p, (a, b)) in enumerate(views.items()):
    k1, k2, k3 = jax.random.split(jax.random.fold_in(key, i), 3)
    out[p] = LowRank(jax.random.normal(k1, (a, r)), jax.random.normal(k2, (b, r)),
                     jax.random.normal(k3, (r,)))
  return out


@pytest.mark.parametrize("name,apply,params,x,views", VIEW_CASES, ids=[c[0] for c in VIEW_CASES])
def test_views_factored_forward_and_records(name, apply, params, x, views):
  assert matrix_views(apply, params, x, list(views)) == views
  leaves = pytree.get(params, list(views))
  # rank 2 goes through the factors everywhere; rank 40 makes a conv densify its kernel
  for r in (2, 40) if name in ("cnn", "nchw_conv") else (2,):
    factors = _factors_for(views, jax.random.PRNGKey(r), r)
    dense = lambda fs: apply(pytree.replace(params, {p: f.dense(leaves[p].shape)
                                                     for p, f in fs.items()}), x)
    _assert_factored_is_dense(apply, params, factors, x, dense, (1e-10, 1e-10), (1e-8, 1e-9))
  # each record rebuilds its own output: act (or the ids) times the dense weight in its view
  _, uses = trace_matmuls(apply, params, {}, x, list(views))
  for p, us in uses.items():
    assert us, p
    for u in us:
      assert u.view == views[p]
      wv = leaves[p].reshape(views[p])
      U, V = (wv, jnp.eye(wv.shape[1])) if u.axis == 0 else (jnp.eye(wv.shape[0]), wv.T)
      np.testing.assert_allclose(u.apply(U[None], V[None])[0], u.out, rtol=1e-10, atol=1e-12)


def test_lookup_out_of_range_follows_the_gather_mode():
  e = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
  ids = jnp.array([[0, 4, 7], [-1, 2, -9]])
  low = LowRank(jax.random.normal(jax.random.PRNGKey(1), (5, 2)),
                jax.random.normal(jax.random.PRNGKey(2), (3, 2)), jnp.array([0.5, -2.0]))
  for mode, fill in (("fill", None), ("fill", 0.25), ("clip", None)):
    apply = lambda p, i: jnp.take(p["E"], i, axis=0, mode=mode, fill_value=fill)
    want = apply({"E": low.dense()}, ids)
    np.testing.assert_allclose(apply_factored(apply, {"E": e}, {"E": low}, ids), want,
                               rtol=1e-12)
    (u,), = trace_matmuls(apply, {"E": e}, {}, ids, ["E"])[1].values()
    # a dropped lookup has no row: zero contribution, where the output holds the fill value
    rows = u.apply(e[None], jnp.eye(3)[None])[0]
    wrapped = jnp.where(ids < 0, ids + 5, ids)   # jnp.take wraps negatives once, then drops
    dropped = (wrapped < 0) | (wrapped > 4) if mode == "fill" else jnp.zeros(ids.shape, bool)
    np.testing.assert_allclose(rows, jnp.where(dropped[..., None], 0.0, apply({"E": e}, ids)),
                               rtol=1e-12)


def _unsupported_cases():
  yield "elementwise", lambda p, x: x @ p["W"].T + jnp.sum(p["W"] ** 2), "meets `integer_pow`"
  yield "slice", lambda p, x: x @ p["W"][0], "meets `slice`"
  yield ("gather_not_rows", lambda p, x: x * p["W"][jnp.array([0, 1]), jnp.array([2, 3])][0],
         "not a lookup of whole rows")
  yield ("batched", lambda p, x: jnp.einsum("hij,bhj->bhi", p["W"].reshape(2, 2, 6),
                                            jnp.stack([x, x], 1)), "batched product")
  yield ("scan", lambda p, x: lax.scan(lambda c, _: (c @ p["W"].T @ p["W"], None), x,
                                       None, length=2)[0], "lax.scan")


@pytest.mark.parametrize("name,apply,match", list(_unsupported_cases()),
                         ids=[c[0] for c in _unsupported_cases()])
def test_a_use_without_a_view_product_raises_naming_the_weight(name, apply, match):
  params = {"W": jnp.ones((4, 6)), "other": jnp.ones(2)}
  with pytest.raises(UnsupportedUse, match=rf"'W'.*{match}.*ablation"):
    trace_matmuls(apply, params, {}, jnp.ones((3, 6)), ["W"])
  apply_factored(apply, params, {"W": LowRank(jnp.ones((4, 1)), jnp.ones((6, 1)))},
                 jnp.ones((3, 6)))  # unwatched, the same model runs densely


def test_grouped_conv_and_mismatched_view_raise():
  k = jnp.ones((3, 3, 1, 4))
  grouped = lambda p, x: lax.conv_general_dilated(x, p["K"], (1, 1), "SAME",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                  feature_group_count=2)
  with pytest.raises(UnsupportedUse, match="'K'.*grouped convolution"):
    trace_matmuls(grouped, {"K": k}, {}, jnp.ones((2, 5, 5, 2)), ["K"])
  dense = lambda p, x: x @ p["W"]
  with pytest.raises(UnsupportedUse, match=r"'W'.*\(4, 6\) matrix.*decomposed as a \(6, 4\)"):
    trace_matmuls(dense, {"W": jnp.ones((4, 6))}, {}, jnp.ones((3, 4)), ["W"],
                  views={"W": (6, 4)})
  with pytest.raises(ValueError, match="take part in no product"):
    matrix_views(lambda p, x: x, {"W": jnp.ones((4, 6))}, jnp.ones(3), ["W"])
