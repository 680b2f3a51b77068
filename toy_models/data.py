"""Sparse feature vectors (docs/methods/shared.md §0.3), generated on device from a key."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections


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


def sparse_features_nonzero(key, batch: int, n_features: int, p: float, lo: float = 0.0,
                            hi: float = 1.0, group_size: int = 1, random_sign: bool = False,
                            dtype=jnp.float32) -> jax.Array:
  """L3D's generator (docs/methods/shared.md §0.3, l3d.md §3.5): `sparse_features` without all-zero
  rows.

  Features come in co-active groups of `group_size` (each group active with probability p, every
  member of an active group drawn independently from U[lo, hi]); `random_sign` flips each value's
  sign with probability 1/2. Rejection sampling is done exactly in one pass: the first active
  group j has P(j) proportional to (1-p)^j p, the groups after it are independent.
  """
  return grouped_features(key, batch, n_features, p, lo, hi, group_size, random_sign,
                          reject_zero=True, dtype=dtype)


def grouped_features(key, batch: int, n_features: int, p: float, lo: float = 0.0,
                     hi: float = 1.0, group_size: int = 1, random_sign: bool = False,
                     reject_zero: bool = False, dtype=jnp.float32) -> jax.Array:
  """[batch, n_features] in co-active groups (see `sparse_features_nonzero`); all-zero rows are
  rejected with `reject_zero`, else kept (each group independently active with probability p)."""
  if n_features % group_size:
    raise ValueError(f"{n_features} features do not split into groups of {group_size}")
  g = n_features // group_size
  kf, ka, kv, ks = jax.random.split(key, 4)
  if reject_zero:
    first = jax.random.categorical(kf, jnp.arange(g) * jnp.log1p(-p), shape=(batch,))
    later = jax.random.bernoulli(ka, p, (batch, g)) & (jnp.arange(g) > first[:, None])
    groups = (jnp.arange(g) == first[:, None]) | later
  else:
    groups = jax.random.bernoulli(ka, p, (batch, g))
  active = jnp.repeat(groups, group_size, axis=1)
  values = jax.random.uniform(kv, (batch, n_features), dtype, lo, hi)
  if random_sign:
    values = jnp.where(jax.random.bernoulli(ks, 0.5, values.shape), values, -values)
  return jnp.where(active, values, 0.0).astype(dtype)


def features_config() -> ml_collections.ConfigDict:
  """The `data` section of a target trained on sparse features: activation probability p,
  active values ~ U[lo, hi], batch size, and L3D's generator options (reject all-zero rows,
  co-active groups, random signs; `grouped_features`)."""
  return ml_collections.ConfigDict(dict(p=0.05, lo=0.0, hi=1.0, batch_size=1024,
                                        reject_zero=False, group_size=1, random_sign=False))


def features_batch(key, c: ml_collections.ConfigDict, n: int) -> jax.Array:
  """[n, c.model.n_features] from the target's feature distribution (c has 'model', 'data')."""
  # fields absent from targets saved before they existed
  reject = c.data.get("reject_zero", False)
  group, sign = c.data.get("group_size", 1), c.data.get("random_sign", False)
  if reject or group > 1 or sign:
    return grouped_features(key, n, c.model.n_features, c.data.p, c.data.lo, c.data.hi,
                            group, sign, reject_zero=reject)
  return sparse_features(key, n, c.model.n_features, c.data.p, c.data.lo, c.data.hi)
