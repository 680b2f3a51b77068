"""Circuit superposition toys of L3D (docs/methods/l3d.md §3.5, TM2 and TM3).

y = ReLU(W_out W_in x + b) trained on the label y* = A^T x with a fixed A_ij ~ U[0, a_max].
params: {'W_in': [n_hidden, n_features], 'W_out': [n_features, n_hidden], 'b': [n_features],
'A': [n_features, n_features] (the task, frozen)}. TM3 draws its inputs in co-active groups.
"""
from __future__ import annotations

import math

import chex
import jax
import ml_collections

FROZEN = ("A",)


def model_config(n_features: int = 10, n_hidden: int = 5,
                 a_max: float = 3.0) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(kind="circuits", n_features=n_features,
                                        n_hidden=n_hidden, a_max=a_max))


def init(key, cfg) -> dict:
  ki, ko, kb, ka = jax.random.split(key, 4)
  n, h = cfg.n_features, cfg.n_hidden
  return {"W_in": jax.random.normal(ki, (h, n)) / math.sqrt(n),
          "W_out": jax.random.normal(ko, (n, h)) / math.sqrt(h),
          "b": 0.1 * jax.random.normal(kb, (n,)),
          "A": jax.random.uniform(ka, (n, n), minval=0.0, maxval=cfg.a_max)}


def apply(params: dict, x: jax.Array) -> jax.Array:
  """[..., n_features] -> [..., n_features]."""
  chex.assert_axis_dimension(x, -1, params["W_in"].shape[1])
  return jax.nn.relu(x @ params["W_in"].T @ params["W_out"].T + params["b"])


def label_from(params: dict, x: jax.Array) -> jax.Array:
  """y* = A^T x (row form x @ A)."""
  return x @ params["A"]
