"""apply_factored must equal apply on the dense weight, whatever the model does with it."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paramdecomp.core import pytree
from paramdecomp.core.factored import apply_factored, trace_matmuls
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
  np.testing.assert_allclose(apply_factored(apply, params, factors, x), dense(factors),
                             rtol=1e-10, atol=1e-12)
  g1 = jax.grad(lambda fs: jnp.sum(jnp.sin(apply_factored(apply, params, fs, x))))(factors)
  g2 = jax.grad(lambda fs: jnp.sum(jnp.sin(dense(fs))))(factors)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


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
