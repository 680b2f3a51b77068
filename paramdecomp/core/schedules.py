"""Learning-rate schedules of the APD/SPD reference code, as optax (docs/methods/shared.md §0.6)."""
from __future__ import annotations

import math

import jax.numpy as jnp

KINDS = ("constant", "linear", "cosine", "exponential")


def lr_schedule(lr: float, steps: int, warmup_pct: float = 0.0, kind: str = "constant",
                halflife: float = 1000.0):
  """step -> lr: linear warmup over int(steps*warmup_pct) steps, then `kind` decay to `steps`."""
  if kind not in KINDS:
    raise ValueError(f"unknown schedule {kind!r}; use one of {KINDS}")
  warm = int(steps * warmup_pct)
  span = max(steps - warm, 1)

  def decay(t):
    if kind == "constant":
      return jnp.ones_like(t)
    if kind == "linear":
      return 1.0 - t / span
    if kind == "cosine":
      return jnp.cos(0.5 * math.pi * t / max(span - 1, 1))
    return (0.5 ** (1.0 / halflife)) ** t

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    if warm == 0:
      return lr * decay(step)
    return jnp.where(step < warm, lr * step / warm, lr * decay(step - warm))

  return schedule
