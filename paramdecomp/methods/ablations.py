"""Node and edge ablations of a basis (docs/methods/lib.md §5.4): how many directions and edges a
model needs to keep its performance.

Scores are per-sample functions ``score_fn(output [B, ...], y [B]) -> {name: [B]}`` averaged over
the evaluation data in jitted, chunked scans (`scan.dataset_sum`).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from paramdecomp.core import scan
from paramdecomp.methods import lib
from paramdecomp.methods.lib import NodeBasis, View


def classifier_scores(logits: jax.Array, y: jax.Array) -> dict:
  """Per-sample cross-entropy and correctness of logits [B, K] against labels [B]."""
  return {"loss": optax.softmax_cross_entropy_with_integer_labels(logits, y),
          "accuracy": (jnp.argmax(logits, -1) == y).astype(logits.dtype)}


def exponential_schedule(n: int, cutoff: int = 10, base: float = 1.05) -> list[int]:
  """Numbers of ablated directions out of n (§5.4): n, n-1, ..., n-cutoff, then a_{x+1} =
  int(a_x - base^x) from a_0 = n-cutoff while positive, then 0."""
  out = list(range(n, n - cutoff - 1, -1))
  a, x = n - cutoff, 0
  while True:
    a = int(a - base ** x)
    x += 1
    if a <= 0:
      break
    out.append(a)
  out.append(0)
  return list(dict.fromkeys(v for v in out if 0 <= v <= n))


def run_from(seq, params, view: View, l: int, fa: jax.Array) -> jax.Array:
  """The model's output from node l's augmented activation fa [T, D] of one sample."""
  for k in range(l, view.last):
    fa = lib.aug_section(seq, params, view, k, k + 1)(fa)
  return fa.reshape(view.shapes[view.last])


def _scorer(seq, view, l, score_fn, transform, chunk: int) -> Callable:
  """``(params, targs, x, y) -> mean scores`` when node l's activations pass through
  ``transform(params, targs, fa)`` (compiled once for all targs)."""

  def fn(args, batch, w, i):
    p, ta = args
    xb, yb = batch
    fa = lib.node_acts(seq, p, view, l, xb)
    out = jax.vmap(lambda f: run_from(seq, p, view, l, transform(p, ta, f)))(fa)
    return {k: jnp.sum(w * v) for k, v in score_fn(out, yb).items()}

  summed = scan.chunked_sum(fn, chunk)

  def score(params, targs, x, y):
    n = jax.tree.leaves(x)[0].shape[0]
    return {k: float(v) / n for k, v in summed((params, targs), (x, y)).items()}
  return score


def node_ablation_curve(seq, params, x, y, basis: NodeBasis, l: int, score_fn: Callable,
                        schedule: list[int] | None = None, chunk_size: int = 512,
                        dtype=None) -> list[dict]:
  """Scores with node l projected onto its r most important directions, f -> f C[:, :r] C⁺[:r].

  Indexed by the number of *original* dimensions ablated, a (schedule default: §5.4's
  exponential one): r = max(min(n - a, k), 0) with n the node's dimension (constant included)
  and k the kept basis size. a = 0 runs the node unchanged (the identity, not C C⁺).
  """
  dtype = dtype or scan.init_dtype(params)
  params, x = scan.cast(params, dtype), scan.cast(x, dtype)
  view = lib.view_of(seq, params, jax.tree.map(lambda a: a[0], x))
  n, k = basis.C.shape
  c, c_pinv = jnp.asarray(basis.C, dtype), jnp.asarray(basis.C_pinv, dtype)
  schedule = exponential_schedule(n) if schedule is None else schedule

  def transform(p, mask, fa):
    return jnp.where(mask[-1] > 0, fa, ((fa @ c) * mask[:-1]) @ c_pinv)

  scorer = _scorer(seq, view, l, score_fn, transform, chunk_size)
  curve = []
  for a in sorted(schedule):
    r = max(min(n - a, k), 0)
    mask = jnp.asarray(np.r_[np.arange(k) < r, a == 0], dtype)
    s = scorer(params, mask, x, y)
    curve.append({"n_ablated": a, "n_kept": n - a, "n_basis_kept": r, **s})
  return curve


def directions_needed(curve: list[dict], threshold: float, key: str = "accuracy") -> int | None:
  """Smallest number of kept (original) directions m such that every evaluated count >= m
  scores at least `threshold` (None when even the unablated node scores below it)."""
  need = None
  for row in sorted(curve, key=lambda r: -r["n_kept"]):
    if row[key] < threshold:
      break
    need = row["n_kept"]
  return need


def edge_mask(e: np.ndarray, n_edges: int, n_const_in: int) -> np.ndarray:
  """[k_out, k_in] 0/1 mask keeping the n_edges strongest edges; edges leaving the constant
  direction (the first n_const_in inputs) are always kept and not counted."""
  mask = np.zeros(e.shape)
  mask[:, :n_const_in] = 1
  rest = e[:, n_const_in:].ravel()
  if n_edges > 0:
    top = np.argsort(-rest, kind="stable")[:n_edges]
    sub = np.zeros(rest.shape)
    sub[top] = 1
    mask[:, n_const_in:] = sub.reshape(e.shape[0], -1)
  return mask


def edge_ablation_scorer(seq, params, x, basis_in: NodeBasis, basis_out: NodeBasis, l: int,
                         score_fn: Callable, chunk_size: int = 256, dtype=None) -> Callable:
  """``(mask, x, y) -> mean scores`` when each basis feature i of node l+1 is computed from the
  node-l features it keeps (mask [k_out, k_in], mask[i, j] = 1), the others set to 0, and rotated
  back with C⁺ (§5.4). Compiled once for all masks."""
  dtype = dtype or scan.init_dtype(params)
  params = scan.cast(params, dtype)
  view = lib.view_of(seq, params, jax.tree.map(lambda a: a[0], scan.cast(x, dtype)))
  c_in, c_in_pinv = jnp.asarray(basis_in.C, dtype), jnp.asarray(basis_in.C_pinv, dtype)
  c_out, c_out_pinv = jnp.asarray(basis_out.C, dtype), jnp.asarray(basis_out.C_pinv, dtype)
  k_out = c_out.shape[1]

  def transform(p, m, fa):   # node l's augmented activation -> node l+1's
    sec = lib.aug_section(seq, p, view, l, l + 1)
    h = fa @ c_in
    outs = jax.vmap(lambda mi, i: (sec((h * mi) @ c_in_pinv) @ c_out)[:, i])(m, jnp.arange(k_out))
    return outs.T @ c_out_pinv

  def fn(args, batch, w, i):
    p, m = args
    xb, yb = batch
    fa = lib.node_acts(seq, p, view, l, xb)
    out = jax.vmap(lambda f: run_from(seq, p, view, l + 1, transform(p, m, f)))(fa)
    return {k: jnp.sum(w * v) for k, v in score_fn(out, yb).items()}

  summed = scan.chunked_sum(fn, chunk_size)

  def score(mask, x, y):
    n = jax.tree.leaves(x)[0].shape[0]
    sums = summed((params, jnp.asarray(mask, dtype)), (scan.cast(x, dtype), y))
    return {k: float(v) / n for k, v in sums.items()}
  return score


def edge_ablation_scores(seq, params, x, y, basis_in, basis_out, l, mask, score_fn,
                         chunk_size: int = 256, dtype=None) -> dict:
  """Mean scores with the edges of E^l outside `mask` ablated (see `edge_ablation_scorer`)."""
  return edge_ablation_scorer(seq, params, x, basis_in, basis_out, l, score_fn, chunk_size,
                              dtype)(mask, x, y)


def edge_threshold(e: np.ndarray, n_edges: int, n_const_in: int) -> float:
  """Strength of the weakest of the n_edges strongest non-constant edges (0 if none kept)."""
  rest = np.sort(np.asarray(e)[:, n_const_in:].ravel())[::-1]
  return float(rest[n_edges - 1]) if n_edges > 0 else 0.0


def bisect(ok: Callable[[int], bool], lo: int, hi: int) -> int:
  """Smallest K in (lo, hi] with ok(K), assuming ok is monotone and ok(hi) holds (lo fails)."""
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if ok(mid):
      hi = mid
    else:
      lo = mid
  return hi


def edges_needed(seq, params, x, y, basis_in, basis_out, l, e, score_fn, base: float,
                 tolerance: float = 1e-3, key: str = "accuracy", chunk_size: int = 256,
                 dtype=None) -> tuple[int, list]:
  """Minimal number of (non-constant) edges of E^l keeping `key` >= base - tolerance, by
  bisection (§5.4); returns it with the evaluated (K, score) pairs."""
  n_const = basis_in.n_const
  total = e[:, n_const:].size
  trace = []
  scorer = edge_ablation_scorer(seq, params, x, basis_in, basis_out, l, score_fn, chunk_size,
                                dtype)

  def ok(n_edges):
    s = scorer(edge_mask(e, n_edges, n_const), x, y)
    trace.append((n_edges, s[key]))
    return s[key] >= base - tolerance

  if ok(0):
    return 0, trace
  if not ok(total):
    return total, trace
  return bisect(ok, 0, total), trace
