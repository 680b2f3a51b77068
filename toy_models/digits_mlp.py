"""An MLP on the 8x8 handwritten digits that scikit-learn ships (`load_digits`; nothing is
downloaded), in Flax linen: 64 -> 100 -> 100 -> 10, ReLU, biases (the LIB paper's MNIST MLP shape
on the smaller images, docs/methods/lib.md §5.5).

Sequential view: node `layers.k` is the input of layer k (`layers.0` the pixels scaled to [0, 1]),
`output` the logits.
"""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from paramdecomp.core import sequential

FROZEN = ()
TASK = "classify"


def model_config(d_in: int = 64, hidden: tuple = (100, 100),
                 n_classes: int = 10) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(kind="digits_mlp", d_in=d_in, hidden=tuple(hidden),
                                        n_classes=n_classes))


def data_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(train_frac=0.8, split_seed=0, batch_size=64))


class MLP(nn.Module):
  hidden: tuple = (100, 100)
  n_classes: int = 10

  def setup(self):
    widths = tuple(self.hidden) + (self.n_classes,)
    self.dense = [nn.Dense(w, name=f"Dense_{i}") for i, w in enumerate(widths)]

  def layer(self, f, k: int):
    y = self.dense[k](f)
    return y if k == len(self.hidden) else jax.nn.relu(y)

  def __call__(self, x):
    for k in range(len(self.hidden) + 1):
      x = self.layer(x, k)
    return x


def module(cfg) -> MLP:
  return MLP(tuple(cfg.hidden), cfg.n_classes)


def init(key, cfg) -> dict:
  return module(cfg).init(key, jnp.zeros((1, cfg.d_in)))


def apply(params: dict, x: jax.Array) -> jax.Array:
  """[..., 64] -> logits [..., 10]."""
  dense = params["params"]
  n = len(dense)
  chex.assert_axis_dimension(x, -1, dense["Dense_0"]["kernel"].shape[0])
  hidden = tuple(dense[f"Dense_{i}"]["kernel"].shape[1] for i in range(n - 1))
  return MLP(hidden, dense[f"Dense_{n - 1}"]["kernel"].shape[1]).apply(params, x)


def relu_preactivations(params: dict, cfg, x: jax.Array) -> dict:
  """{layer name: pre-activations [N, width]} of each hidden ReLU layer."""
  dense, out = params["params"], {}
  for k in range(len(cfg.hidden)):
    layer = dense[f"Dense_{k}"]
    pre = x @ layer["kernel"] + layer["bias"]
    out[f"Dense_{k}"] = pre
    x = jax.nn.relu(pre)
  return out


def dataset(c: ml_collections.ConfigDict) -> dict:
  """The 1797 scikit-learn digits, pixels / 16, split at random (split_seed) into train / test."""
  from sklearn.datasets import load_digits
  d = load_digits()
  x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int32)
  perm = np.random.default_rng(c.data.split_seed).permutation(len(y))
  n = int(round(c.data.train_frac * len(y)))
  return dict(train_x=x[perm[:n]], train_y=y[perm[:n]], test_x=x[perm[n:]], test_y=y[perm[n:]])


def sequential_view(cfg) -> sequential.Sequential:
  mod = module(cfg)
  n = len(cfg.hidden) + 1
  layers = [(lambda k: lambda params, f: mod.apply(params, f, k, method="layer"))(k)
            for k in range(n)]
  names = tuple(f"layers.{k}" for k in range(n)) + ("output",)
  return sequential.from_functions(layers, names, bias_pattern=r"(.*/)?bias")
