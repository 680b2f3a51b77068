"""Checks on the model inputs a method is given: a batch x [B, ...] that the model maps over."""
from __future__ import annotations

from typing import Any, Callable

import jax


class BatchShapeError(ValueError):
  pass


def check_batched(apply: Callable, params: Any, x: Any) -> None:
  """Raise BatchShapeError when x is not a batch [B, ...] of inputs: the methods run the model
  per sample (x[b:b+1]), so one sample must run through `apply` when x does. Costs two abstract
  traces."""
  leaves = jax.tree.leaves(x)
  shapes = [tuple(a.shape) for a in leaves]
  if not leaves or any(a.ndim == 0 for a in leaves):
    raise BatchShapeError(f"x must be [B, ...] (a batch of model inputs), got shapes {shapes}")
  try:
    jax.eval_shape(apply, params, x)
  except Exception:  # the model does not run on x at all: not a batching question, its own
    return           # error (or the method's shape checks) says why
  try:
    jax.eval_shape(apply, params, jax.tree.map(lambda a: a[:1], x))
  except Exception as e:  # the model's own error says why one sample does not fit
    raise BatchShapeError(
        f"x must be [B, ...] (a batch of model inputs): the model does not run on one sample "
        f"x[:1] of x with shapes {shapes}; was x a single unbatched sample? (the model said: "
        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
