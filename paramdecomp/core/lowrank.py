"""Low-rank parameter components: P_c = U_c V_c^T for a weight seen as a matrix [a, b].

One `Factors` holds all C components of one weight leaf, in the leaf's matrix view: a leaf of
shape S is the row-major reshape of an [a, b] matrix, a = the product of the axes the model
contracts (its input axes), b = the rest, or the reverse (see `paramdecomp.core.factored`, which
finds the view from the model's first product with the leaf). A 2-d leaf is its own view.
Nothing here assumes which axis is the layer's input: for a column-vector layer ``W @ x`` V is
the input side; for a Flax kernel ``x @ K`` U is.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp


class LowRank(NamedTuple):
  """One matrix W = A diag(g) B^T with A [a, r], B [b, r], g [r] (None: all ones).

  Keeping a per-sample mask in g, not in A, lets a vmapped forward pass share A and B across
  samples, so XLA runs it as two plain matrix products on the whole batch.
  """
  A: jax.Array
  B: jax.Array
  g: jax.Array | None = None

  def dense(self, shape=None) -> jax.Array:
    """[a, b] the matrix, or the leaf of `shape` it is the view of (its row-major reshape)."""
    a = self.A if self.g is None else self.A * self.g
    w = a @ self.B.T
    return w if shape is None else w.reshape(shape)

  def T(self) -> "LowRank":
    return LowRank(self.B, self.A, self.g)


class Factors(NamedTuple):
  U: jax.Array  # [C, a, m]
  V: jax.Array  # [C, b, m]


def default_view(shape) -> tuple[int, int]:
  """(a, b) the matrix view of a leaf of `shape` when the model's use is not traced: a 2-d leaf
  as it is; more axes: all but the last against the last, the layout of Flax's Dense, Conv
  (HWIO: (H*W*I, O)) and DenseGeneral output projections ([heads, d_head, d_model]). A kernel
  contracted over fewer axes (DenseGeneral's query/key/value [d_model, heads, d_head]) needs the
  traced view (`paramdecomp.core.factored.matrix_views`)."""
  shape = tuple(shape)
  if len(shape) < 2:
    raise ValueError(f"a leaf of shape {shape} has no default matrix view; trace the model's use "
                     "of it (factored.matrix_views)")
  return math.prod(shape[:-1]), shape[-1]


def view(f: Factors) -> tuple[int, int]:
  """(a, b) the matrix view the factors decompose."""
  return f.U.shape[1], f.V.shape[1]


def init_factors(key, shape, n_components: int, rank: int, init: str = "xavier_normal",
                 scale: float = 1.0, dtype=jnp.float32) -> Factors:
  """Factors for C components of a matrix of `shape` = (a, b) (a leaf's matrix view)."""
  if len(shape) != 2:
    raise ValueError(f"low-rank components need a 2-d weight (a leaf's matrix view), got shape "
                     f"{tuple(shape)}")
  a, b = shape
  ku, kv = jax.random.split(key)
  if init == "xavier_normal":
    # torch's xavier_normal_ on the reference layouts U: [C, m, a], V: [C, b, m]
    # (fan_in = size(1) * size(2), fan_out = size(0) * size(2)).
    std_u = math.sqrt(2.0 / (rank * a + n_components * a))
    std_v = math.sqrt(2.0 / (b * rank + n_components * rank))
    draw_u = lambda k: std_u * jax.random.normal(k, (n_components, a, rank), dtype)
    draw_v = lambda k: std_v * jax.random.normal(k, (n_components, b, rank), dtype)
  elif init == "kaiming_uniform":
    def uniform(k, d):
      bound = math.sqrt(6.0 / (d * rank))
      return jax.random.uniform(k, (n_components, d, rank), dtype, -bound, bound)
    draw_u, draw_v = (lambda k: uniform(k, a)), (lambda k: uniform(k, b))
  else:
    raise ValueError(f"unknown init {init!r}; use 'xavier_normal' or 'kaiming_uniform'")
  return Factors(scale * draw_u(ku), scale * draw_v(kv))


def components(f: Factors) -> jax.Array:
  """[C, a, b] component matrices."""
  return jnp.einsum("cam,cbm->cab", f.U, f.V)


def total(f: Factors) -> jax.Array:
  """[a, b] sum of all components."""
  return jnp.einsum("cam,cbm->ab", f.U, f.V)


def masked_total(f: Factors, mask: jax.Array) -> jax.Array:
  """[..., a, b] sum of components weighted by mask [..., C]."""
  chex.assert_axis_dimension(mask, -1, f.U.shape[0])
  return jnp.einsum("...c,cam,cbm->...ab", mask, f.U, f.V)


def masked_lowrank(f: Factors, mask: jax.Array) -> LowRank:
  """sum_c mask[c] P_c as one rank-(C m) `LowRank`, never formed densely. mask: [C]."""
  c, a, m = f.U.shape
  chex.assert_shape(mask, (c,))
  return LowRank(f.U.transpose(1, 0, 2).reshape(a, c * m),
                 f.V.transpose(1, 0, 2).reshape(f.V.shape[1], c * m), jnp.repeat(mask, m))


def unit_norm_v(f: Factors, eps: float = 1e-12) -> Factors:
  """Every column v_{c,m} (over the b axis) rescaled to unit L2 norm."""
  return f._replace(V=f.V / (jnp.linalg.norm(f.V, axis=1, keepdims=True) + eps))


def project_out_v(grad: Factors, f: Factors) -> Factors:
  """grad with each V-column's component along the (unit) v_{c,m} removed: g <- g - (g.v) v."""
  dot = jnp.sum(grad.V * f.V, axis=1, keepdims=True)
  return grad._replace(V=grad.V - dot * f.V)


def schatten(f: Factors, p: float, eps: float = 1e-16) -> jax.Array:
  """[C] factorised Schatten-p penalty sum_m (|u_m|^2 |v_m|^2 + eps)^(p/2) per component.

  Equals sum_m sigma_m^p when the u's and the v's are each mutually orthogonal.
  """
  uu = jnp.sum(f.U**2, axis=1)  # [C, m]
  vv = jnp.sum(f.V**2, axis=1)
  return jnp.sum((uu * vv + eps) ** (p / 2), axis=-1)
