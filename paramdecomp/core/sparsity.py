"""Top-k and batch top-k masks over attributions (no gradient flows through a mask)."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def topk_mask(scores: jax.Array, k: int) -> jax.Array:
  """[B, C] 0/1 mask with exactly k ones per row, at the row's k largest scores."""
  chex.assert_rank(scores, 2)
  _, idx = jax.lax.top_k(jax.lax.stop_gradient(scores), k)
  rows = jnp.arange(scores.shape[0])[:, None]
  return jnp.zeros_like(scores).at[rows, idx].set(1.0)


def batch_topk_mask(scores: jax.Array, k: float) -> jax.Array:
  """[B, C] 0/1 mask keeping the floor(k*B) largest entries of the whole batch.

  k is the average number of active components per sample (a real number).
  """
  chex.assert_rank(scores, 2)
  b, c = scores.shape
  n = int(k * b)
  if not 0 < n <= b * c:
    raise ValueError(f"batch top-k keeps floor(k*B) = {n} of {b * c} entries (k={k}, B={b})")
  flat = jax.lax.stop_gradient(scores).reshape(-1)
  _, idx = jax.lax.top_k(flat, n)
  return jnp.zeros_like(flat).at[idx].set(1.0).reshape(b, c)


def batch_top_n_mask(scores: jax.Array, n: jax.Array) -> jax.Array:
  """[B, C] 0/1 mask keeping the n largest entries of the whole batch, n traced (a count that
  depends on the data, e.g. APD's exact top-k); ties go to the lower flat index."""
  chex.assert_rank(scores, 2)
  flat = jax.lax.stop_gradient(scores).reshape(-1)
  order = jnp.argsort(-flat, stable=True)
  ranks = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
  return (ranks < n).astype(scores.dtype).reshape(scores.shape)


def fraction_threshold(scores: jax.Array, frac: float) -> jax.Array:
  """Scalar tau: the n-th largest of all entries of `scores`, n = floor(frac * scores.size).

  Keeping ``scores >= tau`` keeps (ties aside) the top `frac` fraction of the entries: L3D's
  fractional batch top-k (docs/methods/l3d.md §3.3) over all B x n_v coefficients.
  """
  n = int(frac * scores.size)
  if not 0 < n <= scores.size:
    raise ValueError(f"fractional top-k keeps floor(frac*N) = {n} of N = {scores.size} entries "
                     f"(frac={frac}); need 1 <= n <= N")
  return jax.lax.top_k(jax.lax.stop_gradient(scores).reshape(-1), n)[0][-1]


def fraction_topk_mask(scores: jax.Array, frac: float) -> jax.Array:
  """0/1 mask (shape of `scores`) of the entries >= `fraction_threshold(scores, frac)`."""
  s = jax.lax.stop_gradient(scores)
  return (s >= fraction_threshold(s, frac)).astype(scores.dtype)
