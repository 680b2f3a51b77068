"""Running ``apply(params, x)`` with some weights given as low-rank factors W = A diag(g) B^T.

The model is traced to a jaxpr once (at trace time) and re-evaluated with each factored weight
kept as its pair of factors wherever it meets a matmul: ``x @ W`` becomes ``((x @ A) * g) @ B^T``.
Any other use of W (a convolution, an elementwise op, control flow) gets the dense matrix, so the
result always equals ``apply`` on the dense weights; only the cost differs. This is what makes a
per-sample masked forward pass (W_b = sum_c s_bc U_c V_c^T, under `vmap`) cost O(C m (a + b)) per
sample instead of O(C m a b), with no knowledge of the architecture.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
from jax import lax
from jax.extend import core as jcore

from paramdecomp import pytree
from paramdecomp.lowrank import LowRank


def _spec(x):
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


def apply_factored(apply: Callable, params: Any, factors: Mapping[str, LowRank], x: Any):
  """``apply(params with each leaf at path p set to factors[p].dense(), x)``, matmuls factored."""
  dense_shapes = {p: jax.ShapeDtypeStruct((f.A.shape[0], f.B.shape[0]),
                                          jax.numpy.result_type(f.A, f.B))
                  for p, f in factors.items()}
  traced_params = pytree.replace(jax.tree.map(_spec, params), dense_shapes)
  closed, out_shape = jax.make_jaxpr(apply, return_shape=True)(traced_params,
                                                               jax.tree.map(_spec, x))
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  args = [factors.get(pytree.path_str(p), v) for p, v in flat] + jax.tree.leaves(x)
  outs = _eval(closed.jaxpr, closed.consts, args)
  return jax.tree.unflatten(jax.tree.structure(out_shape), outs)


def _read(env, v):
  return v.val if isinstance(v, jcore.Literal) else env[v]


def _eval(jaxpr, consts, args):
  env = {}
  for v, c in zip(jaxpr.constvars, consts):
    env[v] = c
  for v, a in zip(jaxpr.invars, args):
    env[v] = a
  for eqn in jaxpr.eqns:
    ins = [_read(env, v) for v in eqn.invars]
    if any(isinstance(i, LowRank) for i in ins):
      outs = _factored_rule(eqn, ins)
    else:
      outs = _bind(eqn, ins)
    for v, o in zip(eqn.outvars, outs):
      if not isinstance(v, jcore.DropVar):
        env[v] = o
  return [_read(env, v) for v in jaxpr.outvars]


def _factored_rule(eqn, ins):
  name = eqn.primitive.name
  if name == "transpose" and tuple(eqn.params["permutation"]) == (1, 0):
    return [ins[0].T()]
  if name == "dot_general":
    out = _dot(ins[0], ins[1], **eqn.params)
    if out is not None:
      return [out]
  if name in ("jit", "pjit"):
    sub = eqn.params["jaxpr"]
    return _eval(sub.jaxpr, sub.consts, ins)
  return _bind(eqn, [i.dense() if isinstance(i, LowRank) else i for i in ins])


def _bind(eqn, ins):
  with eqn.ctx.manager:
    outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
  return outs if eqn.primitive.multiple_results else [outs]


def _dot(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **_):
  """x·W or W·x through the factors; None when the pattern is not one contracted axis of W."""
  (lc, rc), (lb, rb) = dimension_numbers
  if lb or rb or (isinstance(lhs, LowRank) and isinstance(rhs, LowRank)):
    return None
  kw = dict(precision=precision, preferred_element_type=preferred_element_type)
  if isinstance(rhs, LowRank):
    if len(rc) != 1:
      return None
    first, second = (rhs.A, rhs.B) if rc[0] == 0 else (rhs.B, rhs.A)
    t = lax.dot_general(lhs, first, ((tuple(lc), (0,)), ((), ())), **kw)   # [lhs free, r]
    if rhs.g is not None:
      t = t * rhs.g
    return lax.dot_general(t, second, (((t.ndim - 1,), (1,)), ((), ())), **kw)
  if len(lc) != 1:
    return None
  first, second = (lhs.A, lhs.B) if lc[0] == 0 else (lhs.B, lhs.A)
  t = lax.dot_general(first, rhs, (((0,), tuple(rc)), ((), ())), **kw)      # [r, rhs free]
  if lhs.g is not None:
    t = t * lhs.g.reshape((-1,) + (1,) * (t.ndim - 1))
  return lax.dot_general(second, t, (((1,), (0,)), ((), ())), **kw)
