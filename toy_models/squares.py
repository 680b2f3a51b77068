"""L3D's TM4 ('complex loss landscape', docs/methods/l3d.md §3.5): an MLP computing x_i -> x_i^2.

params: {'layers': {'0': {'w': [d_1, d_0], 'b': [d_1]}, ...}} (column-vector layout), hidden
layers of width `width`, `activation` after every hidden layer (and after the output with
`output_activation`, as in the reference code).
"""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections

FROZEN = ()
ACTIVATIONS = {"gelu": jax.nn.gelu, "elu": jax.nn.elu, "relu": jax.nn.relu}


def model_config(n_features: int = 5, width: int = 5, n_hidden_layers: int = 4,
                 activation: str = "gelu",
                 output_activation: bool = False) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(kind="squares", n_features=n_features, width=width,
                                        n_hidden_layers=n_hidden_layers, activation=activation,
                                        output_activation=output_activation))


def _dims(cfg):
  return [cfg.n_features] + [cfg.width] * cfg.n_hidden_layers + [cfg.n_features]


def init(key, cfg) -> dict:
  if cfg.activation not in ACTIVATIONS:
    raise ValueError(f"unknown activation {cfg.activation!r}; use one of {list(ACTIVATIONS)}")
  dims = _dims(cfg)
  layers = {}
  for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
    kw, kb = jax.random.split(jax.random.fold_in(key, i))
    bound = 1 / math.sqrt(a)  # torch nn.Linear default
    layers[str(i)] = {"w": jax.random.uniform(kw, (b, a), minval=-bound, maxval=bound),
                      "b": jax.random.uniform(kb, (b,), minval=-bound, maxval=bound)}
  # the activation is stored by name in the config; apply infers depth from params
  return {"layers": layers}


def make_apply(activation: str = "gelu", output_activation: bool = False):
  act = ACTIVATIONS[activation]

  def apply(params: dict, x: jax.Array) -> jax.Array:
    layers = params["layers"]
    chex.assert_axis_dimension(x, -1, layers["0"]["w"].shape[1])
    n = len(layers)
    for i in range(n):
      x = x @ layers[str(i)]["w"].T + layers[str(i)]["b"]
      if i < n - 1 or output_activation:
        x = act(x)
    return x

  return apply


apply = make_apply()  # the paper's variant (GELU, linear output)


def apply_for(cfg):
  return make_apply(cfg.activation, cfg.output_activation)


def label(x: jax.Array) -> jax.Array:
  return x**2


def report(apply, params: dict, n_points: int = 21) -> dict:
  """Per feature j, the RMS error of output j against x_j^2 when only x_j is active, over a grid
  of [-1, 1]: a feature with a large error is not computed, so no subnetwork can trace it."""
  n = params["layers"]["0"]["w"].shape[1]
  v = jnp.linspace(-1.0, 1.0, n_points)
  errs = [float(jnp.sqrt(jnp.mean((apply(params, v[:, None] * jax.nn.one_hot(j, n))[:, j]
                                   - v**2) ** 2))) for j in range(n)]
  return {"feature_rms_error": errs, "features_learned": int(sum(e < 0.1 for e in errs))}
