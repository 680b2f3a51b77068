"""Residual MLP toy models: compressed computation and cross-layer distributed representations.

r_0 = W_E x,  r_k = r_{k-1} + W_out^k ReLU(W_in^k r_{k-1}),  y = W_E^T r_L
(docs/methods/shared.md §0.4)

params: {'W_E': [d_resid, n_features] (fixed, unit-norm random columns; frozen),
         'layers': {'0': {'W_in': [d_mlp, d_resid], 'W_out': [d_resid, d_mlp]}, ...}}.
No biases. The label is y_i = x_i + ReLU(x_i).
"""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections

from paramdecomp.toy_models.data import sparse_features

FROZEN = ("W_E",)


def model_config(n_features: int = 100, d_resid: int = 1000, n_layers: int = 1,
                 d_mlp: int = 50) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(kind="resid_mlp", n_features=n_features, d_resid=d_resid,
                                        n_layers=n_layers, d_mlp=d_mlp))


def init(key, cfg) -> dict:
  ke, *kl = jax.random.split(key, 1 + 2 * cfg.n_layers)
  w_e = jax.random.normal(ke, (cfg.d_resid, cfg.n_features))
  params = {"W_E": w_e / jnp.linalg.norm(w_e, axis=0, keepdims=True), "layers": {}}
  for i in range(cfg.n_layers):
    # torch nn.Linear's default init (kaiming-uniform with a=sqrt(5)): U(+-1/sqrt(fan_in))
    b_in, b_out = 1 / math.sqrt(cfg.d_resid), 1 / math.sqrt(cfg.d_mlp)
    params["layers"][str(i)] = {
        "W_in": jax.random.uniform(kl[2 * i], (cfg.d_mlp, cfg.d_resid), minval=-b_in,
                                   maxval=b_in),
        "W_out": jax.random.uniform(kl[2 * i + 1], (cfg.d_resid, cfg.d_mlp), minval=-b_out,
                                    maxval=b_out)}
  return params


def apply(params: dict, x: jax.Array) -> jax.Array:
  """[..., n_features] -> [..., n_features]."""
  w_e = params["W_E"]
  chex.assert_axis_dimension(x, -1, w_e.shape[1])
  r = x @ w_e.T
  for i in range(len(params["layers"])):
    layer = params["layers"][str(i)]
    r = r + jax.nn.relu(r @ layer["W_in"].T) @ layer["W_out"].T
  return r @ w_e


def label(x: jax.Array) -> jax.Array:
  return x + jax.nn.relu(x)


def monosemantic_mse(n_features: int, d_mlp: int, p: float) -> float:
  """Per-output MSE of the ideal 'one neuron per feature for the first d_mlp features' model
  (assuming W_E^T W_E = I): the other features lose ReLU(x) with E[ReLU(x)^2] = p/6 for
  x ~ U[-1, 1] active with probability p."""
  return (n_features - d_mlp) / n_features * p / 6


def response(params: dict, feature: int, values: jax.Array) -> jax.Array:
  """[len(values)] output `feature` when x = v e_feature (the target's response curve)."""
  n = params["W_E"].shape[1]
  x = values[:, None] * jax.nn.one_hot(feature, n)
  return apply(params, x)[:, feature]


def neuron_contributions(params: dict, feature: int, relu: bool = False) -> jax.Array:
  """[total neurons] (W_U[i] W_out) * (W_in W_E[:, i]) over all layers' neurons (§0.5); with
  `relu` the neuron's input passes its ReLU (the contribution to output i of the input e_i)."""
  w_e = params["W_E"][:, feature]
  out = []
  for i in range(len(params["layers"])):
    layer = params["layers"][str(i)]
    pre = layer["W_in"] @ w_e
    out.append((w_e @ layer["W_out"]) * (jax.nn.relu(pre) if relu else pre))
  return jnp.concatenate(out)


def report(params: dict, p: float, key, n_samples: int = 100_000) -> dict:
  """The paper's target checks (§1.9): MSE vs the monosemantic baseline, response at x = 1."""
  n = params["W_E"].shape[1]
  d_mlp = sum(layer["W_in"].shape[0] for layer in params["layers"].values())
  x = sparse_features(key, n_samples, n, p, -1.0, 1.0)
  mse = float(jnp.mean((apply(params, x) - label(x)) ** 2))
  at_one = jax.vmap(lambda i: apply(params, jax.nn.one_hot(i, n)[None])[0, i])(jnp.arange(n))
  return {"mse": mse, "monosemantic_mse": monosemantic_mse(n, d_mlp, p),
          "response_at_1_mean": float(at_one.mean()), "response_at_1_min": float(at_one.min()),
          "response_at_1_max": float(at_one.max())}
