"""Sparse feature vectors (METHODS.md §0.3), generated on device from a key."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sparse_features(key, batch: int, n_features: int, p: float, lo: float = 0.0,
                    hi: float = 1.0, dtype=jnp.float32) -> jax.Array:
  """[batch, n_features]: each entry active with probability p, active values ~ U[lo, hi].

  All-zero rows are kept (the APD/SPD 'at_least_zero_active' mode).
  """
  ka, kv = jax.random.split(key)
  active = jax.random.bernoulli(ka, p, (batch, n_features))
  values = jax.random.uniform(kv, (batch, n_features), dtype, lo, hi)
  return jnp.where(active, values, 0.0).astype(dtype)


def exactly_n_active(key, batch: int, n_features: int, n: int, lo: float = 0.0,
                     hi: float = 1.0, dtype=jnp.float32) -> jax.Array:
  """[batch, n_features] with exactly n active (distinct, uniform) entries per row."""
  ka, kv = jax.random.split(key)
  ranks = jnp.argsort(jax.random.uniform(ka, (batch, n_features)), axis=1).argsort(axis=1)
  values = jax.random.uniform(kv, (batch, n_features), dtype, lo, hi)
  return jnp.where(ranks < n, values, 0.0).astype(dtype)
