"""Toy model of superposition: x_hat = ReLU(W^T H W x + b), W tied (docs/methods/shared.md §0.4).

params: {'W': [n_hidden, n_features], 'b': [n_features]} and, for the +ID variants,
'hidden': [n_hidden_layers, n_hidden, n_hidden] fixed to the identity (frozen in training).
"""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from paramdecomp.core.lowrank import Factors

FROZEN = ("hidden",)


def model_config(n_features: int = 5, n_hidden: int = 2, n_hidden_layers: int = 0,
                 bias_zero_init: bool = False) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      kind="tms", n_features=n_features, n_hidden=n_hidden, n_hidden_layers=n_hidden_layers,
      bias_zero_init=bias_zero_init))


def init(key, cfg) -> dict:
  kw, kb = jax.random.split(key)
  n, h = cfg.n_features, cfg.n_hidden
  params = {"W": math.sqrt(2.0 / (n + h)) * jax.random.normal(kw, (h, n))}
  if cfg.bias_zero_init:
    params["b"] = jnp.zeros((n,))
  else:  # torch nn.Linear default for the decoder (fan_in = n_hidden)
    bound = 1.0 / math.sqrt(h)
    params["b"] = jax.random.uniform(kb, (n,), minval=-bound, maxval=bound)
  if cfg.n_hidden_layers:
    params["hidden"] = jnp.broadcast_to(jnp.eye(h), (cfg.n_hidden_layers, h, h))
  return params


def apply(params: dict, x: jax.Array) -> jax.Array:
  """[..., n_features] -> [..., n_features]."""
  w = params["W"]
  chex.assert_axis_dimension(x, -1, w.shape[1])
  h = x @ w.T
  if "hidden" in params:
    for layer in params["hidden"]:
      h = h @ layer.T
  return jax.nn.relu(h @ w + params["b"])


def label(x: jax.Array) -> jax.Array:
  """TMS reconstructs its input."""
  return x


def represented_features(params: dict, threshold: float = 0.5) -> jax.Array:
  """[n_features] bool: the feature's embedding column has norm >= threshold."""
  return jnp.linalg.norm(params["W"], axis=0) >= threshold


def untie(params: dict) -> dict:
  """The tied TMS as separate tensors {'W_in': W, 'W_out': W^T, 'b'} (L3D's TM1 decomposes
  encoder and decoder separately); run it with `apply_untied`."""
  if "hidden" in params:
    raise ValueError("untie supports TMS without hidden layers")
  return {"W_in": params["W"], "W_out": params["W"].T, "b": params["b"]}


def apply_untied(params: dict, x: jax.Array) -> jax.Array:
  """ReLU(W_out W_in x + b): [..., n_features] -> [..., n_features]."""
  chex.assert_axis_dimension(x, -1, params["W_in"].shape[1])
  return jax.nn.relu(x @ params["W_in"].T @ params["W_out"].T + params["b"])


def ground_truth_factors(w, C: int, m: int, merge: tuple[int, int] | None = None) -> Factors:
  """The ground-truth APD decomposition of a TMS W [n_hidden, n_features] as C rank-m components
  (U [C, n_hidden, m], V [C, n_features, m]): component i < n_features is W[:, i] e_i^T (feature
  i's column alone, in its first rank slot), the rest are zero. With ``merge=(a, b)`` component
  a holds features a and b together, in SVD form (u_k sigma_k, v_k: the factorisation of least
  Schatten penalty), and component b is empty (a pure merge; trained merged runs also
  rearrange the rest)."""
  dtype = jnp.asarray(w).dtype
  w = np.asarray(w, np.float64)
  h, n = w.shape
  if C < n or m < (2 if merge else 1):
    raise ValueError(f"{C} components of rank {m} cannot hold the {n} features"
                     + (" with two in one (needs m >= 2)" if merge else ""))
  U, V = np.zeros((C, h, m)), np.zeros((C, n, m))
  for i in range(n):
    U[i, :, 0], V[i, i, 0] = w[:, i], 1.0
  if merge is not None:
    a, b = merge
    both = np.zeros((h, n))
    both[:, [a, b]] = w[:, [a, b]]
    u, sv, vt = np.linalg.svd(both)
    U[[a, b]], V[[a, b]] = 0.0, 0.0
    U[a, :, :2], V[a, :, :2] = u[:, :2] * sv[:2], vt[:2].T
  return Factors(jnp.asarray(U, dtype), jnp.asarray(V, dtype))
