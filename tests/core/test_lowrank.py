import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paramdecomp.core import lowrank


def _orthogonal_factors(key, a, b, m):
  """U [a, m], V [b, m] with mutually orthogonal columns and known singular values."""
  k1, k2, k3 = jax.random.split(key, 3)
  qu, _ = jnp.linalg.qr(jax.random.normal(k1, (a, m)))
  qv, _ = jnp.linalg.qr(jax.random.normal(k2, (b, m)))
  s = jax.random.uniform(k3, (m,), minval=0.1, maxval=3.0)
  # split each singular value unevenly between u and v: the penalty must not care
  r = jax.random.uniform(k1, (m,), minval=0.3, maxval=3.0)
  return qu * jnp.sqrt(s * r), qv * jnp.sqrt(s / r), s


@pytest.mark.parametrize("p", [0.5, 0.9, 1.0, 2.0])
def test_schatten_rank_one_is_frobenius_to_p(p):
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  u, v = jax.random.normal(k1, (1, 6, 1)), jax.random.normal(k2, (1, 4, 1))
  f = lowrank.Factors(u, v)
  got = lowrank.schatten(f, p, eps=0.0)
  want = jnp.linalg.norm(lowrank.components(f)[0]) ** p
  np.testing.assert_allclose(got[0], want, rtol=1e-10)


@pytest.mark.parametrize("p", [0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape,m", [((7, 5), 3), ((4, 9), 4)])
def test_schatten_orthogonal_factors_is_sum_of_singular_values(p, shape, m):
  u, v, s = _orthogonal_factors(jax.random.PRNGKey(1), *shape, m)
  f = lowrank.Factors(u[None], v[None])
  svals = jnp.linalg.svd(lowrank.components(f)[0], compute_uv=False)[:m]
  np.testing.assert_allclose(jnp.sort(svals), jnp.sort(s), rtol=1e-10)
  np.testing.assert_allclose(lowrank.schatten(f, p, eps=0.0)[0], jnp.sum(svals**p), rtol=1e-10)


def test_totals_match_loops():
  f = lowrank.init_factors(jax.random.PRNGKey(2), (5, 3), n_components=4, rank=2,
                           dtype=jnp.float64)
  mats = np.stack([np.asarray(f.U[c] @ f.V[c].T) for c in range(4)])
  np.testing.assert_allclose(lowrank.components(f), mats, rtol=1e-12)
  np.testing.assert_allclose(lowrank.total(f), mats.sum(0), rtol=1e-12)
  mask = jnp.array([[1.0, 0, 0.5, 1], [0, 0, 0, 0]])
  want = np.einsum("bc,cij->bij", mask, mats)
  np.testing.assert_allclose(lowrank.masked_total(f, mask), want, rtol=1e-12, atol=1e-15)
  for b in range(2):  # the factored form used by the masked forward pass is the same matrix
    np.testing.assert_allclose(lowrank.masked_lowrank(f, mask[b]).dense(), want[b], rtol=1e-12,
                               atol=1e-15)


def test_init_rejects_non_matrix_and_unknown_init():
  with pytest.raises(ValueError, match="2-d weight"):
    lowrank.init_factors(jax.random.PRNGKey(0), (3, 4, 5), 2, 2)
  with pytest.raises(ValueError, match="unknown init"):
    lowrank.init_factors(jax.random.PRNGKey(0), (3, 4), 2, 2, init="he")
