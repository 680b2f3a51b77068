"""Sums over a data set in one jitted scan over fixed-size chunks (LIB's moments, ablation
curves, degeneracy's Jacobian Grams)."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any


def dataset_sum(fn: Callable, args: PyTree, data: PyTree, chunk_size: int) -> PyTree:
  """Σ over chunks of ``fn(args, batch, w, i)`` in one jitted scan.

  `data` leaves share a leading axis N; the last chunk is padded with copies of sample 0 that get
  weight w = 0, so `fn` must weight each sample's contribution by w. i is the chunk index.
  """
  return chunked_sum(fn, chunk_size)(args, data)


def chunked_sum(fn: Callable, chunk_size: int) -> Callable:
  """``(args, data) -> Σ_chunks fn(args, batch, w, i)`` compiled once (per data shape), for
  callers that sum the same function with different args (ablation curves, bisections)."""

  @jax.jit
  def run(args, data, w):
    first = jax.tree.map(lambda a: a[0], data)
    init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                        jax.eval_shape(fn, args, first, w[0], 0))

    def body(acc, inp):
      i, b, wb = inp
      return jax.tree.map(jnp.add, acc, fn(args, b, wb.astype(init_dtype(acc)), i)), None
    acc, _ = jax.lax.scan(body, init, (jnp.arange(w.shape[0]), data, w))
    return acc

  def call(args, data):
    n = jax.tree.leaves(data)[0].shape[0]
    chunk = min(chunk_size, n)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n

    def prep(a):
      a = jnp.asarray(a)
      if pad:
        a = jnp.concatenate([a, jnp.broadcast_to(a[:1], (pad,) + a.shape[1:])])
      return a.reshape((n_chunks, chunk) + a.shape[1:])

    w = jnp.concatenate([jnp.ones(n), jnp.zeros(pad)]).reshape(n_chunks, chunk)
    return run(args, jax.tree.map(prep, data), w)

  return call


def init_dtype(tree) -> jnp.dtype:
  leaves = [a for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]
  return leaves[0].dtype if leaves else jnp.float32


def cast(tree: PyTree, dtype) -> PyTree:
  """Floating leaves of `tree` in `dtype` (integer leaves, e.g. token ids, unchanged)."""
  return jax.tree.map(
      lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
      else jnp.asarray(a), tree)
