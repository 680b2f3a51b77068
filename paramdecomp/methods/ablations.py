"""Node and edge ablations of a basis (docs/methods/lib.md §5.4): how many directions and edges a
model needs to keep its performance.

Scores are weighted means ``score_fn(output [B, ...], y [B], weights [B]) -> {name: scalar}``
(e.g. `core.metrics.classification`) over the evaluation data, summed in jitted, chunked scans
(`scan.dataset_sum`, compiled once per shape: the basis and mask are traced arguments, so every
point of a curve or bisection reuses one program).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from paramdecomp.core import scan, sequential
from paramdecomp.methods import lib
from paramdecomp.methods.lib import NodeBasis


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


def _score_chunk(seq, view, node, resume, transform, score_fn, args, batch, w, i):
  """Σ_b w_b scores when node `node`'s augmented activations pass through ``transform(view, p,
  targs, fa)`` to node `resume`'s, and the model runs on from there."""
  p, targs = args
  xb, yb = batch

  def one(fa):
    f, c = lib.unaugment(transform(view, p, targs, fa), resume, view)
    return sequential.forward_from(seq, p, f, resume, None, c)
  out = jax.vmap(one)(lib.node_acts(seq, p, xb, node))
  return {k: v * jnp.sum(w) for k, v in score_fn(out, yb, w).items()}


def _prepare(seq, params, x, dtype):
  """(params, x, view, dtype) with params and x in `dtype` (default: the params' own), once per
  curve or bisection rather than once per point."""
  dtype = dtype or scan.init_dtype(params)
  params, x = scan.cast(params, dtype), scan.cast(x, dtype)
  return params, x, lib.view_of(seq, params, jax.tree.map(lambda a: a[0], x)), dtype


def _mean_scores(seq, view, params, x, y, node: int, resume: int, transform, targs, score_fn,
                 chunk_size: int, dtype) -> dict:
  """Mean scores over (x, y) with `transform` between node and resume (see `_score_chunk`);
  params and x already in `dtype`."""
  fn = scan.bind(_score_chunk, seq, view, node, resume, transform, score_fn)
  sums = scan.dataset_sum(fn, (params, scan.cast(targs, dtype)), (x, y), chunk_size)
  n = jax.tree.leaves(x)[0].shape[0]
  return {k: float(v) / n for k, v in sums.items()}


def _project(view, p, targs, fa):
  """fa projected onto the kept basis directions, f -> ((f C) ⊙ mask) C⁺; the identity when the
  last mask entry is set (the unablated node)."""
  mask, c, c_pinv = targs
  return jnp.where(mask[-1] > 0, fa, ((fa @ c) * mask[:-1]) @ c_pinv)


def node_ablation_curve(seq, params, x, y, node: int, basis: NodeBasis, score_fn: Callable,
                        schedule: list[int] | None = None, chunk_size: int = 512,
                        dtype=None) -> list[dict]:
  """Scores with a node projected onto its r most important directions, f -> f C[:, :r] C⁺[:r].

  Indexed by the number of *original* dimensions ablated, a (schedule default: §5.4's
  exponential one): r = max(min(n - a, k), 0) with n the node's dimension (constant included)
  and k the kept basis size. a = 0 runs the node unchanged (the identity, not C C⁺).
  """
  n, k = basis.C.shape
  schedule = exponential_schedule(n) if schedule is None else schedule
  params, x, view, dtype = _prepare(seq, params, x, dtype)
  curve = []
  for a in sorted(schedule):
    r = max(min(n - a, k), 0)
    targs = (np.r_[np.arange(k) < r, a == 0].astype(np.float64), basis.C, basis.C_pinv)
    s = _mean_scores(seq, view, params, x, y, node, node, _project, targs, score_fn, chunk_size,
                     dtype)
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


def _edge_transform(seq, node, view, p, targs, fa):
  """Node `node`'s augmented activation -> node + 1's, each basis feature i of node + 1 computed
  from the node features it keeps (mask[i, j] = 1; the others set to 0), rotated back with C⁺."""
  mask, c_in, c_in_pinv, c_out, c_out_pinv = targs
  h = fa @ c_in

  def feature(mi, i):
    return (lib.aug_forward(seq, p, (h * mi) @ c_in_pinv, node, node + 1, view) @ c_out)[:, i]
  outs = jax.vmap(feature)(mask, jnp.arange(c_out.shape[1]))
  return outs.T @ c_out_pinv


def edge_ablation_scores(seq, params, x, y, node: int, basis_in: NodeBasis, basis_out: NodeBasis,
                         mask: np.ndarray, score_fn: Callable, chunk_size: int = 256,
                         dtype=None) -> dict:
  """Mean scores with the edges of E^node outside `mask` [k_out, k_in] ablated (§5.4): each basis
  feature i of node + 1 is computed from the node features j with mask[i, j] = 1 only."""
  params, x, view, dtype = _prepare(seq, params, x, dtype)
  return _edge_scores(seq, view, params, x, y, node, basis_in, basis_out, mask, score_fn,
                      chunk_size, dtype)


def _edge_scores(seq, view, params, x, y, node, basis_in, basis_out, mask, score_fn, chunk_size,
                 dtype) -> dict:
  targs = (mask, basis_in.C, basis_in.C_pinv, basis_out.C, basis_out.C_pinv)
  return _mean_scores(seq, view, params, x, y, node, node + 1,
                      scan.bind(_edge_transform, seq, node), targs, score_fn, chunk_size, dtype)


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


def edges_needed(seq, params, x, y, node: int, basis_in: NodeBasis, basis_out: NodeBasis,
                 e: np.ndarray, score_fn: Callable, base: float, tolerance: float = 1e-3,
                 key: str = "accuracy", chunk_size: int = 256, dtype=None) -> tuple[int, list]:
  """Minimal number of (non-constant) edges of E^node keeping `key` >= base - tolerance, by
  bisection (§5.4); returns it with the evaluated (K, score) pairs."""
  n_const = basis_in.n_const
  total = e[:, n_const:].size
  params, x, view, dtype = _prepare(seq, params, x, dtype)
  trace = []

  def ok(n_edges):
    s = _edge_scores(seq, view, params, x, y, node, basis_in, basis_out,
                     edge_mask(e, n_edges, n_const), score_fn, chunk_size, dtype)
    trace.append((n_edges, s[key]))
    return s[key] >= base - tolerance

  if ok(0):
    return 0, trace
  if not ok(total):
    return total, trace
  return bisect(ok, 0, total), trace
