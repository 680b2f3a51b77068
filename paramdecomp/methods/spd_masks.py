"""SPD's mask sources: where the r of m = g + (1 - g) r comes from (docs/methods/spd.md §3).

A source is ``source(key, ci, objective) -> r``: ci is {site: g [*pos, C]}, r the same shapes.
`objective` is the loss the masks will be scored by, ``r -> scalar`` (differentiable): the random
sources ignore it; an adversarial source (PGD on r, as in the method's newest peer) would ascend
it, and slots in here without any change to the losses.
"""
from __future__ import annotations

from typing import Callable

import jax

MaskSource = Callable[[jax.Array, dict, Callable | None], dict]


def _per_site(draw) -> MaskSource:
  def source(key, ci: dict, objective=None) -> dict:
    del objective
    return {s: jax.lax.stop_gradient(draw(jax.random.fold_in(key, i), g))
            for i, (s, g) in enumerate(ci.items())}
  return source


# r ~ U(0, 1) i.i.d. per sample, position, subcomponent (the paper)
uniform = _per_site(lambda k, g: jax.random.uniform(k, g.shape, g.dtype))
# r in {0, 1}, each with probability 1/2 (the later library's `binomial`)
binomial = _per_site(lambda k, g: jax.random.bernoulli(k, 0.5, g.shape).astype(g.dtype))

SOURCES: dict[str, MaskSource] = {"uniform": uniform, "binomial": binomial}


def masks(g: dict, r: dict) -> dict:
  """{site: m = g + (1 - g) r}: g = 1 keeps a subcomponent, g = 0 scales it by r; gradients
  reach g (dm/dg = 1 - r)."""
  return {s: g[s] + (1 - g[s]) * r[s] for s in g}
