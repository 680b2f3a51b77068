"""A sequential view of a model: pure layer functions between named activation nodes.

A `Sequential` is ``input_fn(params, x) -> f^0`` followed by layers
``layer_k(params, f^k, c) -> f^{k+1}``. Each layer acts on one sample (no batch axis) or on any
leading batch axes alike. `c` is the value of the constant coordinate that every bias of the layer
multiplies ("bias folding", docs/methods/lib.md §5.2 step 0): at c = 1 the layer is the model's
own; methods that scale a node's activations (integrated gradients) scale c with them. Wrappers
fold biases by scaling the param leaves whose '/'-joined path matches `bias_pattern`.
"""
from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from paramdecomp.core.pytree import path_str

PyTree = Any
Layer = Callable[[PyTree, jax.Array, jax.Array], jax.Array]


class Sequential(NamedTuple):
  input_fn: Callable[[PyTree, jax.Array], jax.Array]
  layers: tuple[Layer, ...]
  names: tuple[str, ...]          # one per node: len(layers) + 1


def scale_biases(params: PyTree, c, bias_pattern: str) -> PyTree:
  """`params` with every leaf whose path matches `bias_pattern` multiplied by c."""
  return jax.tree_util.tree_map_with_path(
      lambda p, v: v * c if re.fullmatch(bias_pattern, path_str(p)) else v, params)


class UnfoldedBiasError(ValueError):
  pass


def check_bias_folding(seq: Sequential, params: PyTree, nodes) -> None:
  """Raise when a layer's output at zero input is nonzero but scaling the biases by c changes
  nothing: its constant term is not a leaf matched by the bias pattern (e.g. biases named
  'b0', 'b1' under the default pattern), so LIB would treat it as input-dependent and build
  another basis. `nodes`: each node's per-sample shape and dtype (`jax.ShapeDtypeStruct`s).
  Skipped under tracing."""
  if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(params)):
    return
  for k, layer in enumerate(seq.layers):
    f0 = jnp.zeros(nodes[k].shape, nodes[k].dtype)
    with_c, without_c = np.asarray(layer(params, f0, 1.0)), np.asarray(layer(params, f0, 0.0))
    if np.any(with_c != 0) and np.array_equal(with_c, without_c):
      raise UnfoldedBiasError(
          f"layer {k} ({seq.names[k]} -> {seq.names[k + 1]}) gives a nonzero output at zero "
          "input, but no leaf it uses was folded as a bias: name its biases so the bias "
          "pattern matches them (from_functions(..., bias_pattern=...), default "
          "'(.*/)?(bias|b)'), or fold the constant into a bias leaf")


def from_functions(layers: Sequence[Callable[[PyTree, jax.Array], jax.Array]],
                   names: Sequence[str], input_fn=None,
                   bias_pattern: str = r"(.*/)?(bias|b)") -> Sequential:
  """A view of plain ``fn(params, f) -> f'`` layers; biases are the leaves matching the pattern."""
  if len(names) != len(layers) + 1:
    raise ValueError(f"{len(layers)} layers need {len(layers) + 1} node names, got {names}")
  folded = tuple((lambda fn: lambda params, f, c: fn(scale_biases(params, c, bias_pattern), f))(fn)
                 for fn in layers)
  return Sequential(input_fn or (lambda params, x: x), folded, tuple(names))


def from_flax(module, methods: Sequence[str], names: Sequence[str], input_method: str | None = None,
              bias_pattern: str = r"(.*/)?bias") -> Sequential:
  """A view of a Flax linen `module` whose methods map node k to node k+1 (`module.apply` with
  ``method=``); `input_method` maps the raw input to node 0 (default: the input is node 0)."""
  for m in tuple(methods) + ((input_method,) if input_method else ()):
    if not callable(getattr(module, m, None)):
      raise ValueError(f"{type(module).__name__} has no method {m!r}")
  layers = [(lambda m: lambda params, f: module.apply(params, f, method=m))(m) for m in methods]
  input_fn = None
  if input_method:
    input_fn = lambda params, x: module.apply(params, x, method=input_method)  # noqa: E731
  return from_functions(layers, names, input_fn, bias_pattern)


def forward_from(seq: Sequential, params: PyTree, f: jax.Array, node: int,
                 stop: int | None = None, c=1.0) -> jax.Array:
  """Node `stop`'s activation (default: the output) from node `node`'s activation f: layers
  node..stop-1, every bias scaled by c. The one layer loop that every other function uses."""
  stop = len(seq.layers) if stop is None else stop
  if not 0 <= node <= stop <= len(seq.layers):
    raise ValueError(f"nodes {node}->{stop} outside 0..{len(seq.layers)}")
  for layer in seq.layers[node:stop]:
    f = layer(params, f, c)
  return f


def activation(seq: Sequential, params: PyTree, x: jax.Array, node: int) -> jax.Array:
  """Node `node`'s activation for input x (with x's leading axes): layers 0..node-1 at c = 1."""
  return forward_from(seq, params, seq.input_fn(params, x), 0, node)


def apply(seq: Sequential, params: PyTree, x: jax.Array) -> jax.Array:
  """The model's output: every layer at c = 1."""
  return activation(seq, params, x, len(seq.layers))


def node_activations(seq: Sequential, params: PyTree, x: jax.Array) -> list[jax.Array]:
  """[f^0, ..., f^L] for input x (each with x's leading axes)."""
  acts = [seq.input_fn(params, x)]
  for k in range(len(seq.layers)):
    acts.append(forward_from(seq, params, acts[-1], k, k + 1))
  return acts


def constant_like(f: jax.Array, c) -> jax.Array:
  """The constant coordinate c for activations f [..., d]: [..., 1] in f's dtype."""
  return jnp.broadcast_to(jnp.asarray(c, f.dtype), f.shape[:-1] + (1,))
