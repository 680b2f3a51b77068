"""Per-sample gradients and forward-mode directional derivatives, shared by every method."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from paramdecomp.core.scan import map_chunks

PyTree = Any


def per_sample_grads(fn: Callable[..., jax.Array], params: PyTree, *batch: jax.Array,
                     chunk_size: int | None = None) -> PyTree:
  """Gradients of the scalar ``fn(params, *sample)`` for each sample of `batch`.

  `batch` arrays share a leading axis B; fn sees one sample (no batch axis). Returns a pytree like
  `params` with a leading axis B. With `chunk_size`, B is processed in chunks of that many samples
  under `lax.map`, so at most chunk_size × params gradients are live at once.
  """
  g = jax.vmap(jax.grad(fn), in_axes=(None,) + (0,) * len(batch))
  return map_chunks(lambda *xs: g(params, *xs), batch, chunk_size)


def per_sample_grad_sq_norms(fn: Callable[..., jax.Array], params: PyTree, *batch: jax.Array,
                             chunk_size: int | None = None) -> jax.Array:
  """[B] squared L2 norms (over all leaves) of the per-sample gradients of `per_sample_grads`.

  With `chunk_size` only chunk_size x params gradients are ever live: memory does not grow with
  B x params, which is what lets a method need ||g_i||^2 without holding every g_i.
  """
  def sq(*xs):
    g = per_sample_grads(fn, params, *xs)
    return sum(jnp.sum(leaf.reshape(leaf.shape[0], -1) ** 2, axis=1) for leaf in jax.tree.leaves(g))

  return map_chunks(sq, batch, chunk_size)


def directional_derivatives(fn: Callable[[PyTree], jax.Array], primal: PyTree,
                            tangents: PyTree) -> tuple[jax.Array, jax.Array]:
  """(fn(primal), [K, ...] derivatives of fn along K stacked tangent directions) via `jvp`.

  `tangents` is a pytree like `primal` whose leaves carry a leading axis K. Forward mode costs K
  forward passes and never forms a gradient per output, so it is the cheap way to get
  <grad_theta f_o, P_k> for every output o and direction k at once.
  """
  out, fn_jvp = jax.linearize(fn, primal)  # one primal pass shared by all K directions
  return out, jax.vmap(fn_jvp)(tangents)
