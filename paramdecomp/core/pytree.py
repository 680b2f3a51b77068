"""Selecting and replacing leaves of a params pytree by path patterns.

A path is the '/'-joined string of a leaf's keys, e.g. ``params/Dense_0/kernel`` for a Flax linen
tree or ``W`` for a plain dict. Patterns are regular expressions matched against the whole path.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np

PyTree = Any


def _key_str(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_str(path) -> str:
  """'/'-joined string of a `jax.tree_util` key path."""
  return "/".join(_key_str(k) for k in path)


def leaf_paths(tree: PyTree) -> list[str]:
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def select(tree: PyTree, patterns: Sequence[str]) -> tuple[str, ...]:
  """Paths of the leaves matched (in full) by any pattern, in tree order.

  Raises ValueError naming a pattern that matches nothing, with the paths that exist.
  """
  if isinstance(patterns, str):
    patterns = (patterns,)
  paths = leaf_paths(tree)
  chosen = []
  for pat in patterns:
    hits = [p for p in paths if re.fullmatch(pat, p)]
    if not hits:
      raise ValueError(f"pattern {pat!r} matches no parameter; paths are {paths}")
    chosen.extend(h for h in hits if h not in chosen)
  return tuple(p for p in paths if p in chosen)


def get(tree: PyTree, paths: Sequence[str]) -> dict[str, jax.Array]:
  """{path: leaf} for the given paths."""
  flat = {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  missing = [p for p in paths if p not in flat]
  if missing:
    raise KeyError(f"no leaves at {missing}; paths are {list(flat)}")
  return {p: flat[p] for p in paths}


def replace(tree: PyTree, new: Mapping[str, jax.Array]) -> PyTree:
  """A copy of `tree` with the leaves at the paths of `new` replaced (shapes may change)."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  unknown = set(new) - {path_str(p) for p, _ in flat}
  if unknown:
    raise KeyError(f"no leaves at {sorted(unknown)}")
  leaves = [new.get(path_str(p), v) for p, v in flat]
  return jax.tree_util.tree_unflatten(treedef, leaves)


class NonFiniteError(ValueError):
  pass


def check_finite(tree: PyTree, what: str) -> None:
  """Raise NonFiniteError naming the first leaf of `tree` (by path) that holds a NaN or an inf."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.asarray(leaf)
    if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
      bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
      raise NonFiniteError(f"the {what} holds {bad} non-finite value(s) in {path_str(path)!r} "
                       f"(shape {a.shape})")
