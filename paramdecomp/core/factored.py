"""Running ``apply(params, x)`` with some weights given as low-rank factors W = A diag(g) B^T.

The model is traced to a jaxpr once (at trace time) and re-evaluated with each factored weight
kept as its pair of factors wherever it meets a matmul: ``x @ W`` becomes ``((x @ A) * g) @ B^T``.
Any other use of W (a convolution, an elementwise op, control flow) gets the dense matrix, so the
result always equals ``apply`` on the dense weights; only the cost differs. This is what makes a
per-sample masked forward pass (W_b = sum_c s_bc U_c V_c^T, under `vmap`) cost O(C m (a + b)) per
sample instead of O(C m a b), with no knowledge of the architecture.

`trace_matmuls` runs the same interpreter and also reports every matrix product a watched weight
takes part in (its other operand and its output), which is how APD reads a decomposed layer's
input and pre-activation without knowing where the layer sits in the model.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jcore

from paramdecomp.core import pytree
from paramdecomp.core.lowrank import LowRank


class MatmulUse(NamedTuple):
  """One matrix product a watched weight W took part in.

  act: the other operand with its contracted axis moved last, [..., k].
  out: the product as the model computed it (the layer's pre-activation).
  axis: the axis of W (as stored in params) contracted with act: 1 for ``W @ a``, 0 for a Flax
  kernel ``a @ K``. A Python int, so a `MatmulUse` is not returned through `vmap`.
  w_first: whether W's free axis comes first in `out` (``W @ a``) or last (``a @ W^T``).
  """
  act: jax.Array
  out: jax.Array
  axis: int
  w_first: bool

  def apply(self, U: jax.Array, V: jax.Array) -> jax.Array:
    """[C, *out.shape] the product with each P_c = U_c V_c^T (U [C, a, m], V [C, b, m]) in W's
    place, computed through the factors."""
    y = self._apply(U, V)
    return jnp.moveaxis(y, -1, 1) if self.w_first else y

  def _apply(self, U, V):  # [C, *act free axes, W free axis]
    first, second = (V, U) if self.axis == 1 else (U, V)
    t = jnp.einsum("...k,ckm->c...m", self.act, first)
    return jnp.einsum("c...m,cjm->c...j", t, second)

  def sq_norms(self, U: jax.Array, V: jax.Array) -> jax.Array:
    """[C, *act free axes] |P_c a|^2 over W's free axis."""
    return jnp.sum(self._apply(U, V) ** 2, axis=-1)


def _spec(x):
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


def apply_factored(apply: Callable, params: Any, factors: Mapping[str, LowRank], x: Any):
  """``apply(params with each leaf at path p set to factors[p].dense(), x)``, matmuls factored."""
  return trace_matmuls(apply, params, factors, x, ())[0]


def trace_matmuls(apply: Callable, params: Any, factors: Mapping[str, LowRank], x: Any,
                  watch: Sequence[str], shifts: Mapping[str, Sequence[jax.Array]] | None = None
                  ) -> tuple[Any, dict[str, list[MatmulUse]]]:
  """`apply_factored`'s output and, for each path in `watch`, the matrix products of that weight
  (factored or dense) in the order the model runs them (tied weights give several).

  shifts: {path: [one array per product of that weight]} added to those products' outputs, so
  that differentiating in the shifts gives the gradient with respect to a layer's pre-activation
  without knowing where the layer is.
  """
  dense_shapes = {p: jax.ShapeDtypeStruct((f.A.shape[0], f.B.shape[0]),
                                          jnp.result_type(f.A, f.B))
                  for p, f in factors.items()}
  traced_params = pytree.replace(jax.tree.map(_spec, params), dense_shapes)
  closed, out_shape = jax.make_jaxpr(apply, return_shape=True)(traced_params,
                                                               jax.tree.map(_spec, x))
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  paths = [pytree.path_str(p) for p, _ in flat]
  unknown = sorted(set(watch) - set(paths))
  if unknown:
    raise KeyError(f"cannot watch {unknown}: no such parameters; paths are {paths}")
  args = [factors.get(p, v) for p, (_, v) in zip(paths, flat)] + jax.tree.leaves(x)
  # a tag (path, transposed) follows each watched weight through transposes and nested jits
  tags = [(p, False) if p in watch else None for p in paths] + [None] * len(jax.tree.leaves(x))
  records: dict[str, list[MatmulUse]] = {p: [] for p in watch}
  if shifts and set(shifts) - set(watch):
    raise KeyError(f"shifts for unwatched weights {sorted(set(shifts) - set(watch))}")
  shifts = dict(shifts or {})
  outs = _eval(closed.jaxpr, closed.consts, args, tags, (records, shifts))
  for p, sh in shifts.items():
    if len(sh) != len(records[p]):
      raise ValueError(f"{len(sh)} shifts for {p!r}, which takes part in {len(records[p])} "
                       "products")
  return jax.tree.unflatten(jax.tree.structure(out_shape), outs), records


def _read(env, v):
  return v.val if isinstance(v, jcore.Literal) else env[v]


def _eval(jaxpr, consts, args, tags, records):
  """records: ({path: [MatmulUse]} filled in as products run, {path: [shift per product]})."""
  env, tag_of = {}, {}
  for v, c in zip(jaxpr.constvars, consts):
    env[v] = c
  for v, a, t in zip(jaxpr.invars, args, tags):
    env[v] = a
    if t is not None:
      tag_of[v] = t
  for eqn in jaxpr.eqns:
    ins = [_read(env, v) for v in eqn.invars]
    in_tags = [None if isinstance(v, jcore.Literal) else tag_of.get(v) for v in eqn.invars]
    outs, out_tags = _rule(eqn, ins, in_tags, records)
    for v, o, t in zip(eqn.outvars, outs, out_tags):
      if not isinstance(v, jcore.DropVar):
        env[v] = o
        if t is not None:
          tag_of[v] = t
  return [_read(env, v) for v in jaxpr.outvars]


def _rule(eqn, ins, in_tags, records):
  """(outputs, their tags) of one equation, keeping factored weights factored."""
  name = eqn.primitive.name
  n_out = len(eqn.outvars)
  if name in ("jit", "pjit") and (any(in_tags) or any(isinstance(i, LowRank) for i in ins)):
    sub = eqn.params["jaxpr"]
    return _eval(sub.jaxpr, sub.consts, ins, in_tags, records), [None] * n_out
  if name == "transpose" and tuple(eqn.params["permutation"]) == (1, 0):
    t = in_tags[0] and (in_tags[0][0], not in_tags[0][1])
    return [ins[0].T() if isinstance(ins[0], LowRank) else _bind(eqn, ins)[0]], [t]
  if name == "dot_general":
    out = None
    if any(isinstance(i, LowRank) for i in ins):
      out = _dot(ins[0], ins[1], **eqn.params)
    if out is None:
      out = _bind(eqn, _densify(ins))[0]
    for side, tag in enumerate(in_tags):
      if tag is not None and not in_tags[1 - side]:
        out = _record(records, tag, ins[1 - side], out, eqn.params["dimension_numbers"], side)
    return [out], [None]
  return _bind(eqn, _densify(ins)), [None] * n_out


def _densify(ins):
  return [i.dense() if isinstance(i, LowRank) else i for i in ins]


def _record(records, tag, act, out, dimension_numbers, w_side):
  """Note the product of watched weight `tag` with `act` (one contracted axis each); returns the
  output with that product's shift added, if any."""
  (lc, rc), (lb, rb) = dimension_numbers
  w_axes, act_axes = (lc, rc) if w_side == 0 else (rc, lc)
  if lb or rb or len(w_axes) != 1:
    raise NotImplementedError(f"watched weight {tag[0]!r} meets a batched or multi-axis "
                              f"product (dimension_numbers={dimension_numbers})")
  axis = w_axes[0] if not tag[1] else 1 - w_axes[0]
  uses, shifts = records[0][tag[0]], records[1].get(tag[0], ())
  if len(uses) < len(shifts):
    out = out + shifts[len(uses)]
  uses.append(MatmulUse(jnp.moveaxis(act, act_axes[0], -1), out, axis, w_side == 0))
  return out


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
