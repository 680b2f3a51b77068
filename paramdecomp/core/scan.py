"""Sums over a data set in one jitted scan over fixed-size chunks (LIB's moments, ablation
curves, degeneracy's Jacobian Grams), compiled once per (per-chunk function, shapes).

The per-chunk function is a static argument of one module-level jitted scan, so jax's compile
cache keys on it: pass a module-level function, or `bind(fn, *static)` of one (equal whenever fn
and the static arguments are equal). A lambda or `functools.partial` made per call is a new key
each time and recompiles on every call.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any


class bind:
  """``fn`` with its leading arguments fixed to `static` (hashable values: a view, node indices,
  a frozen config). Unlike functools.partial, two binds of the same fn to equal static
  arguments are equal and hash alike, so a fresh one per call still hits the compile cache."""
  __slots__ = ("fn", "static", "__weakref__")   # jax caches on weak references

  def __init__(self, fn: Callable, *static):
    try:
      hash(static)
    except TypeError as e:
      raise TypeError(f"scan.bind({getattr(fn, '__name__', fn)}, ...): static arguments must be "
                      f"hashable (pass arrays as traced args instead): {e}") from None
    self.fn, self.static = fn, static

  def __call__(self, *args):
    return self.fn(*self.static, *args)

  def __eq__(self, other):
    return isinstance(other, bind) and self.fn == other.fn and self.static == other.static

  def __hash__(self):
    return hash((self.fn, self.static))

  def __repr__(self):
    return f"bind({getattr(self.fn, '__name__', self.fn)}, {len(self.static)} static)"


def dataset_sum(fn: Callable, args: PyTree, data: PyTree, chunk_size: int) -> PyTree:
  """Σ over chunks of ``fn(args, batch, w, i)`` in one jitted scan.

  `data` leaves share a leading axis N; the last chunk is padded with copies of sample 0 that get
  weight w = 0, so `fn` must weight each sample's contribution by w [chunk]. i is the chunk
  index. `fn` must be hashable and stable across calls (see the module docstring); args are
  traced, so new args of the same shapes reuse the compiled scan.
  """
  n = jax.tree.leaves(data)[0].shape[0]
  return _scan_sum(fn, min(int(chunk_size), n), args, data)


@functools.partial(jax.jit, static_argnames=("fn", "chunk"))
def _scan_sum(fn, chunk, args, data):
  n = jax.tree.leaves(data)[0].shape[0]
  n_chunks = -(-n // chunk)
  pad = n_chunks * chunk - n

  def prep(a):   # [N, ...] -> [n_chunks, chunk, ...], padded with copies of sample 0
    a = jnp.asarray(a)
    if pad:
      a = jnp.concatenate([a, jnp.broadcast_to(a[:1], (pad,) + a.shape[1:])])
    return a.reshape((n_chunks, chunk) + a.shape[1:])

  chunks = jax.tree.map(prep, data)
  w = (jnp.arange(n_chunks * chunk) < n).astype(float).reshape(n_chunks, chunk)
  first = jax.tree.map(lambda a: a[0], chunks)
  init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                      jax.eval_shape(fn, args, first, w[0], 0))

  def body(acc, inp):
    i, b, wb = inp
    return jax.tree.map(jnp.add, acc, fn(args, b, wb.astype(init_dtype(acc)), i)), None
  acc, _ = jax.lax.scan(body, init, (jnp.arange(n_chunks), chunks, w))
  return acc


def map_chunks(f: Callable[..., PyTree], batch, chunk_size: int | None) -> PyTree:
  """f(*batch) for an f batched over the leading axis, run chunk_size samples at a time under
  `lax.map` (all at once without chunk_size)."""
  b = batch[0].shape[0]
  if chunk_size is None or chunk_size >= b:
    return f(*batch)
  if b % chunk_size:
    raise ValueError(f"batch {b} is not a multiple of chunk_size {chunk_size}")
  # chunk j holds samples j, j + n, j + 2n, ... (n chunks): a batch split over devices in
  # contiguous blocks (a mesh's 'data' axis) then splits every chunk alike, so each device works
  # on its share of every chunk instead of the scan running whole chunks on one device
  n = b // chunk_size
  chunked = [x.reshape((chunk_size, n) + x.shape[1:]).swapaxes(0, 1) for x in batch]
  out = jax.lax.map(lambda xs: f(*xs), chunked)
  return jax.tree.map(lambda y: y.swapaxes(0, 1).reshape((b,) + y.shape[2:]), out)


def init_dtype(tree) -> jnp.dtype:
  """The dtype of the first floating leaf of `tree` (float32 when it has none)."""
  leaves = [a for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]
  return leaves[0].dtype if leaves else jnp.float32


def cast(tree: PyTree, dtype) -> PyTree:
  """Floating leaves of `tree` in `dtype` (integer leaves, e.g. token ids, unchanged)."""
  return jax.tree.map(
      lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
      else jnp.asarray(a), tree)
