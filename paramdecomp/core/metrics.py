"""Metrics shared by the methods and runs (docs/methods/shared.md §0.5)."""
from __future__ import annotations

import jax.numpy as jnp
import optax

EPS = 1e-12


def classification(logits: jnp.ndarray, y: jnp.ndarray, weights: jnp.ndarray | None = None
                   ) -> dict:
  """Mean cross-entropy and accuracy of logits [B, K] against integer labels [B], or of sequence
  logits [B, T, K] against [B, T] (each sample's mean over its positions first); with
  `weights` [B] the weighted means over samples (Σ w v / Σ w; 0 when every weight is 0), e.g. to
  drop the padding of a chunked scan, summed in the wider of the logits' and weights' dtypes."""
  if logits.shape[:-1] != y.shape:
    raise ValueError(f"logits {logits.shape} do not match labels {y.shape}: want [B, ..., K] "
                     "against [B, ...]")
  per_sample = lambda v: v.reshape(v.shape[0], -1).mean(1) if v.ndim > 1 else v
  loss = per_sample(optax.softmax_cross_entropy_with_integer_labels(logits, y))
  correct = per_sample((jnp.argmax(logits, -1) == y).astype(loss.dtype))
  if weights is None:
    return {"loss": jnp.mean(loss), "accuracy": jnp.mean(correct.astype(loss.dtype))}
  w = jnp.asarray(weights)
  dtype = jnp.result_type(loss.dtype, w.dtype)
  loss, correct, w = loss.astype(dtype), correct.astype(dtype), w.astype(dtype)
  total = jnp.maximum(jnp.sum(w), jnp.finfo(dtype).tiny)
  return {"loss": jnp.sum(w * loss) / total, "accuracy": jnp.sum(w * correct) / total}


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


def share_structure(target, comps, carry: float = 0.5, part: float = 0.2) -> dict:
  """How the components share the target's columns. target [d, n] (columns W[:, j]), comps
  [C, d, n]; r[c, j] = |comps[c, :, j]| / |W[:, j]|. `merged`: components with r >= `carry` on
  two or more columns; `split`: columns with r >= `part` on two or more components."""
  r = jnp.linalg.norm(comps, axis=1) / (jnp.linalg.norm(target, axis=0) + EPS)   # [C, n]
  return {"merged": int(((r >= carry).sum(1) >= 2).sum()),
          "split": int(((r >= part).sum(0) >= 2).sum())}
