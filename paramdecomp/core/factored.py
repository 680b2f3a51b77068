"""Running ``apply(params, x)`` with some weights given as low-rank factors, in a matrix view.

A decomposed leaf of any shape S is handled as a matrix W [a, b] whose row-major reshape is the
leaf (`LowRank` holds W = A diag(g) B^T; ``W.reshape(S)`` is the leaf). The view is chosen so
that the model's use of the leaf is a product with W: a Flax kernel [d_in, d_out] is its own
view; a conv kernel HWIO is (H*W*I, O); a DenseGeneral kernel [d_model, heads, d_head]
contracted over axis 0 is (d_model, heads*d_head), the output projection [heads, d_head,
d_model] contracted over its first two axes is (heads*d_head, d_model); an embedding table
[V, d] read by a gather is (V, d) (a lookup is a product with one-hot rows).

The model is traced to a jaxpr once (at trace time) and re-evaluated with each factored weight
kept as its factors wherever it meets such a product: ``x @ W`` becomes ``((x @ A) * g) @ B^T``,
a lookup ``W[ids]`` becomes ``(A[ids] * g) @ B^T``, a convolution becomes the product of its
input's patches with the factors. Any other use gets the dense leaf, so the result always equals
``apply`` on the dense weights; only the cost differs. This is what makes a per-sample masked
forward pass (W_b = sum_c s_bc U_c V_c^T, under `vmap`) cost O(C m (a + b)) per sample instead
of O(C m a b), with no knowledge of the architecture.

`trace_matmuls` runs the same interpreter and also reports every product a watched weight takes
part in (its other operand in the view, its output), which is how APD reads a decomposed layer's
input and pre-activation without knowing where the layer sits in the model. A watched weight
used in any other way (elementwise, a slice, a gather that is not a lookup of whole rows or
columns, a product that is not one with its view) raises `UnsupportedUse`: a record it cannot
make would otherwise give that weight's components exactly zero attributions.

The interpreter follows a weight through shape-only ops (reshape, transpose, squeeze, dtype
casts, size-1 broadcasts, nested jits and custom derivatives) by tracking the value as a strided
view of the leaf: (shape, strides in leaf elements). A product maps to the matrix view when the
weight's contracted axes and its free axes each form one row-major block of the leaf.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

from paramdecomp.core import pytree
from paramdecomp.core.lowrank import LowRank

View = tuple[int, int]

ALTERNATIVES = ("decompose another leaf (cfg.decompose), or use the 'ablation' attribution, "
                "which needs no record of how the weight is used")


class UnsupportedUse(NotImplementedError):
  """A watched weight is used in a way that has no product with its matrix view."""


class PerUse(NamedTuple):
  """Factors of a leaf given per product: the i-th product the model makes with the leaf (in
  the order it runs them) uses ``lrs[i]``, or the leaf itself where that is None. SPD's tied
  TMS decoder is the second product of the encoder's leaf, with its own masks; a layerwise pass
  keeps the other products at the target's weight.

  A `LowRank` here (or anywhere) may carry positions in its scale, g [*pos, r]: one scale per
  position of the product (per sample, per token), which must be the product's leading
  positions exactly (the other operand's free axes; a lookup's ids). Such factors have no dense
  value: any use that is not a product raises `UnsupportedUse`.
  """
  lrs: tuple


class Layout(NamedTuple):
  """How a product in view coordinates, [*pos, n_free], lands in the model's output layout.

  free: the sizes the flat free index splits into (the weight's free axes, outermost first).
  perm: the transpose of [*pos, *free] that gives the output as the model computed it.
  """
  free: tuple[int, ...]
  perm: tuple[int, ...]

  def arrange(self, y: jax.Array, lead: int = 0) -> jax.Array:
    """[*lead axes, *pos, n_free] -> [*lead axes, *out.shape]."""
    y = y.reshape(y.shape[:-1] + self.free)
    return jnp.transpose(y, tuple(range(lead)) + tuple(lead + p for p in self.perm))


class MatmulUse(NamedTuple):
  """One product a watched weight W took part in, written with its matrix view Wv [a, b].

  act: the other operand in the view, [*pos, k] (k = a if axis == 0 else b): the layer's input
    at every position (for a convolution, the input's patches); None for a lookup, whose
    one-hot rows are not built (`ids` names them).
  out: the product as the model computed it (the layer's pre-activation).
  axis: the view axis contracted with act: 0 for ``act @ Wv`` (a Flax kernel, a conv kernel,
    a row lookup), 1 for ``Wv @ act`` (a column-vector layer W @ x, x @ W.T).
  view: (a, b). layout: how [*pos, other view axis] maps to `out`.
  ids: [*pos] for a lookup, the picked rows (axis 0) or columns (axis 1) of Wv; an index out of
    range (a dropped lookup) is stored as k and picks nothing.
  Python ints and tuples in the static fields, so a `MatmulUse` is not returned through `vmap`.
  """
  act: jax.Array | None
  out: jax.Array
  axis: int
  view: View
  layout: Layout
  ids: jax.Array | None = None

  def _view_product(self, U: jax.Array, V: jax.Array) -> jax.Array:
    """[C, *pos, other view axis]: act in the view times each P_c = U_c V_c^T."""
    first, second = (U, V) if self.axis == 0 else (V, U)
    if self.ids is None:
      t = jnp.einsum("...k,ckm->c...m", self.act, first)
    else:  # index k (one past the end) is a dropped lookup: fill 0, no wrap-around
      t = jnp.take(first, self.ids, axis=1, mode="fill", fill_value=0)
    return jnp.einsum("c...m,cjm->c...j", t, second)

  def apply(self, U: jax.Array, V: jax.Array) -> jax.Array:
    """[C, *out.shape] the product with each P_c = U_c V_c^T (U [C, a, m], V [C, b, m]) in W's
    place, computed through the factors."""
    return self.layout.arrange(self._view_product(U, V), 1)

  def sq_norms(self, U: jax.Array, V: jax.Array) -> jax.Array:
    """[C, *pos] |P_c a|^2 over W's free axes, at every position (first: the batch)."""
    return jnp.sum(self._view_product(U, V) ** 2, axis=-1)

  @property
  def pos_shape(self) -> tuple[int, ...]:
    """The positions: the other operand's free axes (a lookup's ids), batch first."""
    return tuple(self.act.shape[:-1] if self.ids is None else self.ids.shape)


class _Weight(NamedTuple):
  """A value derived from leaf `path` by shape-only ops: value[i] = leaf.flat[sum_k i_k s_k].

  strides: None when the value is no longer a strided view (a reshape of a transposed copy).
  """
  path: str
  shape: tuple[int, ...]
  strides: tuple[int, ...] | None


class _Factored(NamedTuple):
  """A factored leaf on its way through shape-only ops: `ops` are the equations applied so far
  (replayed on the dense leaf when it has to be densified), `w` where it stands."""
  lr: LowRank | PerUse
  leaf_shape: tuple[int, ...]
  ops: tuple
  w: _Weight
  leaf: Any = None    # the dense leaf (for the products a `PerUse` leaves at the leaf's value)

  def dense(self, lr: LowRank | None = None):
    """The value (factors `lr`, default its own; with lr=None on a `PerUse`: the leaf)."""
    if lr is None and isinstance(self.lr, PerUse):
      v = self.leaf
    else:
      lr = self.lr if lr is None else lr
      if isinstance(lr, PerUse) or (lr.g is not None and lr.g.ndim > 1):
        _unsupported(self.w.path, "is given per product or with per-position scales, so it has "
                     "no single dense value, but meets a use that is not a product")
      v = lr.dense().reshape(self.leaf_shape)
    for eqn in self.ops:
      v = _bind(eqn, [v])[0]
    return v


def _spec(x):
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _row_major(shape) -> tuple[int, ...]:
  return tuple(int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape)))


def apply_factored(apply: Callable, params: Any, factors: Mapping[str, LowRank], x: Any):
  """``apply(params with each leaf at path p set to factors[p].dense().reshape(leaf shape), x)``,
  the products of the factored leaves computed through the factors."""
  return trace_matmuls(apply, params, factors, x, ())[0]


def trace_matmuls(apply: Callable, params: Any, factors: Mapping[str, LowRank], x: Any,
                  watch: Sequence[str], shifts: Mapping[str, Sequence[jax.Array]] | None = None,
                  views: Mapping[str, View] | None = None
                  ) -> tuple[Any, dict[str, list[MatmulUse]]]:
  """`apply_factored`'s output and, for each path in `watch`, the products of that weight
  (factored or dense) in the order the model runs them (tied weights give several).

  views: {path: (a, b)} the matrix view of a watched weight; a factored weight's is its factors'
  (A [a, r], B [b, r]); otherwise the view of its first product. A watched weight used in a way
  that is not a product with that view raises `UnsupportedUse`, naming the path.
  shifts: {path: [one array per product of that weight]} added to those products' outputs, so
  that differentiating in the shifts gives the gradient with respect to a layer's pre-activation
  without knowing where the layer is.
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  paths = [pytree.path_str(p) for p, _ in flat]
  unknown = sorted((set(watch) | set(factors)) - set(paths))
  if unknown:
    raise KeyError(f"cannot watch or factor {unknown}: no such parameters; paths are {paths}")
  leaves = dict(zip(paths, (v for _, v in flat)))
  view_of = {p: _view_of(f) for p, f in factors.items()}
  view_of = {p: v for p, v in view_of.items() if v is not None}
  for p, (a, b) in view_of.items():
    if a * b != math.prod(leaves[p].shape):
      raise ValueError(f"factors of {p!r} make a ({a}, {b}) matrix; the leaf has shape "
                       f"{tuple(leaves[p].shape)}")
  for p, v in (views or {}).items():
    if p in view_of and tuple(v) != view_of[p]:
      raise ValueError(f"view {tuple(v)} of {p!r} differs from its factors' {view_of[p]}")
    view_of[p] = tuple(v)
  traced_params = jax.tree.map(_spec, params)
  closed, out_shape = jax.make_jaxpr(apply, return_shape=True)(traced_params,
                                                               jax.tree.map(_spec, x))
  args, tags = [], []
  for p, (_, v) in zip(paths, flat):
    w = _Weight(p, tuple(v.shape), _row_major(v.shape))
    args.append(_Factored(factors[p], tuple(v.shape), (), w, v) if p in factors else v)
    tags.append(w if p in watch else None)
  args += jax.tree.leaves(x)
  tags += [None] * len(jax.tree.leaves(x))
  if shifts and set(shifts) - set(watch):
    raise KeyError(f"shifts for unwatched weights {sorted(set(shifts) - set(watch))}")
  ctx = _Ctx({p: [] for p in watch}, dict(shifts or {}), view_of, {})
  outs, _ = _eval(closed.jaxpr, closed.consts, args, tags, ctx)
  for p, f in factors.items():
    if isinstance(f, PerUse) and ctx.counts.get(p, 0) != len(f.lrs):
      raise ValueError(f"{len(f.lrs)} per-product factors for {p!r}, which takes part in "
                       f"{ctx.counts.get(p, 0)} products")
  outs = [o.dense() if isinstance(o, _Factored) else o for o in outs]
  for p, sh in ctx.shifts.items():
    if len(sh) != len(ctx.records[p]):
      raise ValueError(f"{len(sh)} shifts for {p!r}, which takes part in {len(ctx.records[p])} "
                       "products")
  return jax.tree.unflatten(jax.tree.structure(out_shape), outs), ctx.records


def matrix_views(apply: Callable, params: Any, x: Any, paths: Sequence[str]) -> dict[str, View]:
  """{path: (a, b)} the matrix view of each leaf from its first product in ``apply(params, x)``
  (traced abstractly: nothing is computed; x may be a `jax.ShapeDtypeStruct` tree). Raises for a
  leaf the model does not use in a product, and as `trace_matmuls` does for any other use."""
  found = {}

  def run(params, x):
    out, uses = trace_matmuls(apply, params, {}, x, paths)
    found.update({p: us[0].view for p, us in uses.items() if us})
    return out

  jax.eval_shape(run, params, x)
  unused = [p for p in paths if p not in found]
  if unused:
    raise ValueError(f"{unused} take part in no product of the model: there is nothing to "
                     "decompose them by; check cfg.decompose")
  return {p: found[p] for p in paths}


class _Ctx(NamedTuple):
  records: dict       # {path: [MatmulUse]} filled in as products run
  shifts: dict        # {path: [shift per product]}
  views: dict         # {path: (a, b)}, completed by first uses
  counts: dict        # {path: products so far} of the factored leaves


def _view_of(f) -> View | None:
  """(a, b) of a LowRank or of the first factors of a PerUse (None: all at the leaf)."""
  if isinstance(f, PerUse):
    given = [lr for lr in f.lrs if lr is not None]
    if any((lr.A.shape[0], lr.B.shape[0]) != (given[0].A.shape[0], given[0].B.shape[0])
           for lr in given):
      raise ValueError("the per-product factors of one leaf must share its matrix view")
    return (given[0].A.shape[0], given[0].B.shape[0]) if given else None
  return f.A.shape[0], f.B.shape[0]


def _next_factors(ctx, fac: _Factored) -> LowRank | None:
  """The factors of the product `fac` now takes part in (None: the leaf's dense value)."""
  n = ctx.counts.get(fac.w.path, 0)
  ctx.counts[fac.w.path] = n + 1
  if not isinstance(fac.lr, PerUse):
    return fac.lr
  if n >= len(fac.lr.lrs):
    raise ValueError(f"{len(fac.lr.lrs)} per-product factors for {fac.w.path!r}, which takes "
                     "part in more products")
  return fac.lr.lrs[n]


def _read(env, v):
  return v.val if isinstance(v, jcore.Literal) else env[v]


def _eval(jaxpr, consts, args, tags, ctx):
  """(outputs, their tags) of `jaxpr` on args, keeping factored weights factored."""
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
    outs, out_tags = _rule(eqn, ins, in_tags, ctx)
    for v, o, t in zip(eqn.outvars, outs, out_tags):
      if not isinstance(v, jcore.DropVar):
        env[v] = o
        if t is not None:
          tag_of[v] = t
  return ([_read(env, v) for v in jaxpr.outvars],
          [None if isinstance(v, jcore.Literal) else tag_of.get(v) for v in jaxpr.outvars])


_SHAPE_OPS = ("reshape", "squeeze", "transpose", "convert_element_type", "copy", "copy_p",
              "broadcast_in_dim", "slice")
_CONTROL = ("scan", "while", "cond")


def _sub_jaxpr(eqn):
  """(jaxpr, consts) of a call-like equation whose body can run inline, else None.

  Custom derivative rules are dropped when a weight goes inside: the body is differentiated as
  written, which gives the same derivative for the rules JAX and Flax ship."""
  p = eqn.params
  if eqn.primitive.name in ("jit", "pjit", "closed_call", "custom_jvp_call", "custom_vjp_call",
                            "custom_vjp_call_jaxpr"):
    j = p.get("jaxpr", p.get("call_jaxpr", p.get("fun_jaxpr")))
  elif eqn.primitive.name in ("checkpoint", "remat", "remat2", "core_call"):
    j = p.get("jaxpr", p.get("call_jaxpr"))
  else:
    return None
  if j is None:
    return None
  return (j.jaxpr, j.consts) if hasattr(j, "consts") else (j, ())


def _rule(eqn, ins, in_tags, ctx):
  """(outputs, their tags) of one equation, keeping factored weights factored."""
  name = eqn.primitive.name
  n_out = len(eqn.outvars)
  weighty = any(in_tags) or any(isinstance(i, _Factored) for i in ins)
  if not weighty:
    return _bind(eqn, ins), [None] * n_out
  sub = _sub_jaxpr(eqn)
  if sub is not None:
    return _eval(sub[0], sub[1], ins, in_tags, ctx)
  if name in _SHAPE_OPS and len(ins) == 1:
    return _shape_rule(eqn, ins[0], in_tags[0])
  if name == "dot_general":
    return _dot_rule(eqn, ins, in_tags, ctx)
  if name == "conv_general_dilated":
    return _conv_rule(eqn, ins, in_tags, ctx)
  if name == "gather":
    return _gather_rule(eqn, ins, in_tags, ctx)
  for t in in_tags:
    if t is not None:
      what = ("enters a lax.scan / while_loop / cond (unroll it, or close over it outside)"
              if name in _CONTROL else f"meets `{name}`, which is not a product with its matrix "
              "view (an elementwise use, a slice, a reduction, ...)")
      _unsupported(t.path, what)
  return _bind(eqn, _densify(ins)), [None] * n_out


def _unsupported(path, what):
  raise UnsupportedUse(
      f"the decomposed weight {path!r} {what}. APD attributes a weight through its products "
      "only: dot_general (any contracted axes, also after reshapes and transposes), "
      "conv_general_dilated (one feature group) and lookups of whole rows or columns by "
      f"integer ids. Alternatives: {ALTERNATIVES}")


def _densify(ins):
  return [i.dense() if isinstance(i, _Factored) else i for i in ins]


def _leaf_values(ins):
  """ins with a factored leaf whose product keeps the leaf's value (a `PerUse` None) dense."""
  return [i.dense(None) if isinstance(i, _Factored) else i for i in ins]


def _bind(eqn, ins):
  with eqn.ctx.manager:
    outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
  return outs if eqn.primitive.multiple_results else [outs]


# ---- shape-only ops: where a weight value stands in its leaf ------------------------------------

def _shape_rule(eqn, x, tag):
  w = x.w if isinstance(x, _Factored) else tag
  moved = _moved(eqn, w)
  if moved is None:  # a real broadcast (an elementwise use of the weight) or a part of it
    if tag is not None:
      _unsupported(tag.path, "meets `slice`, which takes a part of it, not a product with its "
                   "matrix view" if eqn.primitive.name == "slice"
                   else f"is broadcast ({eqn.primitive.name}) before use")
    return _bind(eqn, _densify([x])), [None]
  new_tag = tag and moved
  if not isinstance(x, _Factored):
    return _bind(eqn, [x]), [new_tag]
  lr = x.lr
  if eqn.primitive.name == "convert_element_type":
    dt = eqn.params["new_dtype"]
    cast = lambda l: l and LowRank(l.A.astype(dt), l.B.astype(dt),
                                   None if l.g is None else l.g.astype(dt))
    lr = PerUse(tuple(cast(l) for l in lr.lrs)) if isinstance(lr, PerUse) else cast(lr)
  return [x._replace(lr=lr, ops=x.ops + (eqn,), w=moved)], [new_tag]


def _moved(eqn, w: _Weight) -> _Weight | None:
  """Where the output of a shape-only equation stands; None for a broadcast that copies values."""
  name, p = eqn.primitive.name, eqn.params
  shape, strides = w.shape, w.strides
  out_shape = tuple(eqn.outvars[0].aval.shape)
  if name in ("convert_element_type", "copy", "copy_p"):
    return w
  if name == "slice":  # only a slice that keeps everything (iterating a 1-long leading axis)
    full = (all(s == 0 for s in p["start_indices"]) and tuple(p["limit_indices"]) == shape
            and all(s == 1 for s in (p["strides"] or (1,) * len(shape))))
    return w if full else None
  if strides is None:
    return w._replace(shape=out_shape)
  if name == "transpose":
    perm = p["permutation"]
    return w._replace(shape=out_shape, strides=tuple(strides[i] for i in perm))
  if name == "broadcast_in_dim":
    dims = p["broadcast_dimensions"]
    if any(shape[i] != out_shape[d] for i, d in enumerate(dims)) or any(
        out_shape[d] != 1 for d in range(len(out_shape)) if d not in dims):
      return None
    new = [0] * len(out_shape)
    for i, d in enumerate(dims):
      new[d] = strides[i]
    return w._replace(shape=out_shape, strides=tuple(new))
  if name == "reshape" and p.get("dimensions") is not None:
    return w._replace(shape=out_shape, strides=None)
  return w._replace(shape=out_shape, strides=_reshaped_strides(shape, strides, out_shape))


def _reshaped_strides(shape, strides, new_shape):
  """Strides of a reshape of a strided view, or None when it is not a strided view (numpy's
  no-copy reshape rule: each group of old axes merged or split must be contiguous)."""
  old = [(n, s) for n, s in zip(shape, strides) if n != 1]
  new_big = [i for i, n in enumerate(new_shape) if n != 1]
  out = [0] * len(new_shape)
  i = j = 0
  while i < len(old) and j < len(new_big):
    oi, nj = [i], [new_big[j]]
    po, pn = old[i][0], new_shape[new_big[j]]
    while po != pn:
      if po < pn:
        i += 1
        oi.append(i)
        po *= old[i][0]
      else:
        j += 1
        nj.append(new_big[j])
        pn *= new_shape[new_big[j]]
    for k, l in zip(oi, oi[1:]):  # the old group must be one contiguous block
      if old[k][1] != old[l][1] * old[l][0]:
        return None
    s = old[oi[-1]][1]
    for d in reversed(nj):
      out[d] = s
      s *= new_shape[d]
    i, j = i + 1, j + 1
  return tuple(out)


# ---- products with the matrix view ---------------------------------------------------------------

def _block(w: _Weight, axes):
  """(size, innermost stride or None when trivial, axes outermost first) of a set of axes of a
  strided view, or None when they are not one row-major block of the leaf."""
  big = sorted((a for a in axes if w.shape[a] != 1), key=lambda a: -w.strides[a])
  for i, j in zip(big, big[1:]):
    if w.strides[i] != w.strides[j] * w.shape[j]:
      return None
  order = tuple(big) + tuple(a for a in axes if w.shape[a] == 1)
  return math.prod(w.shape[a] for a in axes), (w.strides[big[-1]] if big else None), order


def _map_to_view(w: _Weight, contracted, view: View | None):
  """(view, axis, contracted axes outermost first, free axes outermost first) when contracting
  `contracted` axes of the value `w` is a product with the matrix view, else a reason (str)."""
  if w.strides is None:
    return "is a reshape of a transposed copy, which is no matrix view of the leaf"
  free = [a for a in range(len(w.shape)) if a not in contracted]
  kb, fb = _block(w, contracted), _block(w, free)
  if kb is None or fb is None:
    return (f"is used with contracted axes {tuple(contracted)} of shape {w.shape} that do not "
            "form one block of the leaf with the rest")
  (ks, ki, ko), (fs, fi, fo) = kb, fb
  options = []
  if fi in (None, 1) and ki in (None, fs):
    options.append(((ks, fs), 0))
  if ki in (None, 1) and fi in (None, ks):
    options.append(((fs, ks), 1))
  for v, axis in options:
    if view is None or tuple(view) == v:
      return v, axis, ko, fo
  if not options:
    return f"is used with contracted axes {tuple(contracted)} that are no block of the leaf"
  return (f"is used as a ({options[0][0][0]}, {options[0][0][1]}) matrix (contracted axes "
          f"{tuple(contracted)} of shape {w.shape}) but decomposed as a {tuple(view)} one; "
          "pass apply= and x= to apd.init so that the view follows the model's use")


def _weight_side(ins, in_tags, k):
  """The _Weight info of operand k (watched or factored), or None."""
  if isinstance(ins[k], _Factored):
    return ins[k].w
  return in_tags[k]


def _mapping(ins, in_tags, side, contracted, ctx):
  """The view mapping of operand `side` or None; raises for a watched weight it cannot map."""
  w = _weight_side(ins, in_tags, side)
  tag = in_tags[side]
  got = _map_to_view(w, contracted, ctx.views.get(w.path))
  if isinstance(got, str):
    if tag is not None:
      _unsupported(tag.path, got)
    return None
  if tag is not None and tag.path not in ctx.views:
    ctx.views[tag.path] = got[0]
  return got


def _record(ctx, tag, use: MatmulUse):
  """Note the product of watched weight `tag`; returns its output with its shift added, if any."""
  uses, shifts = ctx.records[tag.path], ctx.shifts.get(tag.path, ())
  if len(uses) < len(shifts):
    use = use._replace(out=use.out + shifts[len(uses)])
  uses.append(use)
  return use.out


def _factored_product(act, lr: LowRank, axis, layout, kw, ids=None, fill=None):
  """The model's output of the product of act (or the lookup `ids`) with Wv = A diag(g) B^T."""
  first, second = (lr.A, lr.B) if axis == 0 else (lr.B, lr.A)
  if ids is None:
    t = lax.dot_general(act, first, (((act.ndim - 1,), (0,)), ((), ())), **kw)  # [*pos, r]
  else:
    t = jnp.take(first, ids, axis=0, mode="fill", fill_value=0)
  if lr.g is not None:
    if lr.g.ndim > 1 and lr.g.shape != t.shape:  # per-position scales: no silent broadcast
      raise ValueError(f"per-position scales of shape {lr.g.shape} do not match the product's "
                       f"positions and rank {t.shape}")
    t = t * lr.g
  y = lax.dot_general(t, second, (((t.ndim - 1,), (1,)), ((), ())), **kw)      # [*pos, n]
  if fill is not None:  # lookups out of range return the gather's fill value, as the model's
    y = jnp.where((ids == first.shape[0])[..., None], jnp.asarray(fill, y.dtype), y)
  return layout.arrange(y)


def _out_free_perm(n_pos, free_order, free_axes_in_out):
  """perm for `Layout`: free_axes_in_out[i] is the weight axis at the i-th free output slot."""
  return [n_pos + list(free_order).index(a) for a in free_axes_in_out]


def _dot_rule(eqn, ins, in_tags, ctx):
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  sides = [k for k in (0, 1) if _weight_side(ins, in_tags, k) is not None]
  kw = dict(precision=eqn.params.get("precision"),
            preferred_element_type=eqn.params.get("preferred_element_type"))
  if len(sides) == 2 or lb or rb:
    for t in in_tags:
      if t is not None:
        _unsupported(t.path, "takes part in a batched product or one with another decomposed "
                     f"weight (dimension_numbers={eqn.params['dimension_numbers']})")
    return _bind(eqn, _densify(ins)), [None]
  s = sides[0]
  w_contract, o_contract = (lc, rc) if s == 0 else (rc, lc)
  got = _mapping(ins, in_tags, s, tuple(w_contract), ctx)
  if got is None:
    return _bind(eqn, _densify(ins)), [None]
  view, axis, k_order, f_order = got
  other = ins[1 - s]
  pair = dict(zip(w_contract, o_contract))
  o_free = [d for d in range(other.ndim) if d not in o_contract]
  act = jnp.transpose(other, o_free + [pair[k] for k in k_order])
  act = act.reshape(act.shape[:len(o_free)] + (-1,))
  w = _weight_side(ins, in_tags, s)
  w_free = [d for d in range(len(w.shape)) if d not in w_contract]
  free_perm = _out_free_perm(len(o_free), f_order, w_free)
  perm = (free_perm + list(range(len(o_free))) if s == 0
          else list(range(len(o_free))) + free_perm)
  layout = Layout(tuple(w.shape[a] for a in f_order), tuple(perm))
  lr = _next_factors(ctx, ins[s]) if isinstance(ins[s], _Factored) else None
  if lr is not None:
    out = _factored_product(act, lr, axis, layout, kw)
  else:
    out = _bind(eqn, _leaf_values(ins))[0]
  if in_tags[s] is not None:
    out = _record(ctx, in_tags[s], MatmulUse(act, out, axis, view, layout))
  return [out], [None]


def _conv_rule(eqn, ins, in_tags, ctx):
  p = eqn.params
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  if (_weight_side(ins, in_tags, 0) is not None or p["feature_group_count"] != 1
      or p["batch_group_count"] != 1):
    for t in in_tags:
      if t is not None:
        _unsupported(t.path, "meets a convolution as its input or a grouped convolution "
                     f"(feature_group_count={p['feature_group_count']}, "
                     f"batch_group_count={p['batch_group_count']})")
    return _bind(eqn, _densify(ins)), [None]
  w_contract = (rhs_spec[1],) + tuple(rhs_spec[2:])
  got = _mapping(ins, in_tags, 1, w_contract, ctx)
  if got is None:
    return _bind(eqn, _densify(ins)), [None]
  view, axis, k_order, f_order = got
  w = _weight_side(ins, in_tags, 1)
  feat = out_spec[1]
  n_pos = len(out_spec) - 1
  act = jnp.moveaxis(_patches(eqn, ins[0], w, k_order), feat, -1)     # [*pos, k]
  perm = [i - (i > feat) if i != feat else n_pos for i in range(n_pos + 1)]
  layout = Layout((w.shape[rhs_spec[0]],), tuple(perm))
  kw = dict(precision=p.get("precision"), preferred_element_type=p.get("preferred_element_type"))
  lr = _next_factors(ctx, ins[1]) if isinstance(ins[1], _Factored) else None
  if lr is not None and (lr.A.shape[1] * sum(view) <= math.prod(view)
                         or (lr.g is not None and lr.g.ndim > 1)):
    out = _factored_product(act, lr, axis, layout, kw)
  else:  # a rank too high for the patches to pay: the dense kernel (still exact)
    out = _bind(eqn, [ins[0], ins[1].dense(lr) if isinstance(ins[1], _Factored) else ins[1]]
                + list(ins[2:]))[0]
  if in_tags[1] is not None:
    out = _record(ctx, in_tags[1], MatmulUse(act, out, axis, view, layout))
  return [out], [None]


def _patches(eqn, lhs, w: _Weight, k_order):
  """The input's patches in the kernel's view order: the conv itself with an identity kernel
  whose output features enumerate the contracted kernel entries outermost-first (exact: each
  output is one input value times 1)."""
  rhs_spec = eqn.params["dimension_numbers"].rhs_spec
  sizes = [w.shape[a] for a in k_order]
  n = math.prod(sizes)
  eye = jnp.eye(n, dtype=lhs.dtype).reshape(tuple(sizes) + (n,))
  src = {a: i for i, a in enumerate(k_order)}
  src[rhs_spec[0]] = len(k_order)
  eye = jnp.transpose(eye, [src[a] for a in range(len(w.shape))])
  p = dict(eqn.params)
  return lax.conv_general_dilated(
      lhs, eye, p["window_strides"], p["padding"], p["lhs_dilation"], p["rhs_dilation"],
      p["dimension_numbers"], precision=lax.Precision.HIGHEST)


def _gather_rule(eqn, ins, in_tags, ctx):
  p = eqn.params
  dn = p["dimension_numbers"]
  w = _weight_side(ins, in_tags, 0)
  idx = ins[1]
  lookup = (w is not None and _weight_side(ins, in_tags, 1) is None
            and len(dn.collapsed_slice_dims) == 1
            and tuple(dn.start_index_map) == tuple(dn.collapsed_slice_dims)
            and not dn.operand_batching_dims and idx.shape[-1] == 1
            and all(n == (1 if d == dn.collapsed_slice_dims[0] else w.shape[d])
                    for d, n in enumerate(p["slice_sizes"])))
  if not lookup:
    for t in in_tags:
      if t is not None:
        _unsupported(t.path, "meets a gather that is not a lookup of whole rows or columns "
                     f"(dimension_numbers={dn}, slice_sizes={p['slice_sizes']})")
    return _bind(eqn, _densify(ins)), [None]
  j = dn.collapsed_slice_dims[0]
  got = _mapping(ins, in_tags, 0, (j,), ctx)
  if got is None:
    return _bind(eqn, _densify(ins)), [None]
  view, axis, _, f_order = got
  n = w.shape[j]
  ids = idx[..., 0]
  mode = lax.GatherScatterMode.from_any(p["mode"])
  if mode == lax.GatherScatterMode.FILL_OR_DROP:
    ids = jnp.where((ids < 0) | (ids >= n), n, ids)  # n: dropped (fill), as the primitive does
  else:
    ids = jnp.clip(ids, 0, n - 1)
  n_pos = ids.ndim
  w_free = [d for d in range(len(w.shape)) if d != j]
  perm, k = [], 0
  for i in range(n_pos + len(w_free)):
    if i in dn.offset_dims:
      perm.append(n_pos + list(f_order).index(w_free[list(dn.offset_dims).index(i)]))
    else:
      perm.append(k)
      k += 1
  layout = Layout(tuple(w.shape[a] for a in f_order), tuple(perm))
  lr = _next_factors(ctx, ins[0]) if isinstance(ins[0], _Factored) else None
  if lr is not None:
    fill = None
    if mode == lax.GatherScatterMode.FILL_OR_DROP:
      fill = jnp.nan if p["fill_value"] is None else p["fill_value"]
    out = _factored_product(None, lr, axis, layout,
                            {}, ids=ids, fill=fill)
  else:
    out = _bind(eqn, _leaf_values(ins))[0]
  if in_tags[0] is not None:
    out = _record(ctx, in_tags[0], MatmulUse(None, out, axis, view, layout, ids))
  return [out], [None]
