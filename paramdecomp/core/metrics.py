"""Metrics shared by the methods (docs/methods/shared.md §0.5)."""
from __future__ import annotations

import jax.numpy as jnp

EPS = 1e-12


def mmcs_ml2r(target: jnp.ndarray, comps: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Mean max cosine similarity and mean L2 ratio of target columns vs component columns.

  target: [d, n] (columns W[:, j]); comps: [C, d, n]. Signed cosine; per column j the best
  component by cosine also gives the norm ratio.
  """
  tn = jnp.linalg.norm(target, axis=0) + EPS             # [n]
  cn = jnp.linalg.norm(comps, axis=1) + EPS               # [C, n]
  cos = jnp.einsum("dn,cdn->cn", target, comps) / (tn * cn)
  best = jnp.argmax(cos, axis=0)                          # [n]
  cols = jnp.arange(target.shape[1])
  return cos.max(axis=0).mean(), (cn[best, cols] / tn).mean()
