import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paramdecomp.core.grads import directional_derivatives, per_sample_grads


def _mlp(params, x):
  h = jnp.tanh(params["w1"] @ x + params["b1"])
  return params["w2"] @ h


def _loss(params, x, y):
  return jnp.sum((_mlp(params, x) - y) ** 2)


def _setup():
  ks = jax.random.split(jax.random.PRNGKey(0), 5)
  params = {"w1": jax.random.normal(ks[0], (6, 4)), "b1": jax.random.normal(ks[1], (6,)),
            "w2": jax.random.normal(ks[2], (3, 6))}
  return params, jax.random.normal(ks[3], (12, 4)), jax.random.normal(ks[4], (12, 3))


@pytest.mark.parametrize("chunk", [None, 1, 4, 12, 64])
def test_per_sample_grads_equal_a_python_loop(chunk):
  params, x, y = _setup()
  got = jax.jit(lambda p, x, y: per_sample_grads(_loss, p, x, y, chunk_size=chunk))(params, x, y)
  for i in range(x.shape[0]):
    want = jax.grad(_loss)(params, x[i], y[i])
    for k in params:
      np.testing.assert_allclose(got[k][i], want[k], rtol=1e-10, atol=1e-12)


def test_per_sample_grads_rejects_ragged_chunks():
  params, x, y = _setup()
  with pytest.raises(ValueError, match="multiple of chunk_size"):
    per_sample_grads(_loss, params, x, y, chunk_size=5)


def test_directional_derivatives_match_jacobian_contraction():
  params, x, _ = _setup()
  tangents = jax.tree.map(
      lambda w: jax.random.normal(jax.random.PRNGKey(w.size), (4,) + w.shape), params)
  fn = lambda p: jax.vmap(lambda xi: _mlp(p, xi))(x)
  out, dots = directional_derivatives(fn, params, tangents)
  jac = jax.jacrev(fn)(params)  # leaves [B, 3, *w.shape]
  for k in range(4):
    want = sum(jnp.tensordot(jac[n], tangents[n][k], axes=params[n].ndim) for n in params)
    np.testing.assert_allclose(dots[k], want, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(out, fn(params))
