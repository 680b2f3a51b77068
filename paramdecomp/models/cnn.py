"""A CNN (conv -> conv -> dense, Flax linen) on the 8x8 handwritten digits that scikit-learn
ships (`load_digits`; nothing is downloaded): 3x3 conv (16, SAME) -> ReLU -> 3x3 conv (32,
stride 2) -> ReLU -> flatten (4 x 4 x 32) -> dense 10. Images [N, 8, 8, 1], pixels / 16.

The split is the digits MLP's (the same permutation of the 1797 digits for a split_seed), so
the two classifiers are tested on the same held-out digits.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


def model_config(channels: tuple = (16, 32), n_classes: int = 10) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(kind="digits_cnn", channels=tuple(channels),
                                        n_classes=n_classes))


def data_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(train_frac=0.8, split_seed=0, batch_size=64))


class CNN(nn.Module):
  channels: tuple = (16, 32)
  n_classes: int = 10

  @nn.compact
  def __call__(self, x):
    """[B, 8, 8, 1] -> logits [B, n_classes]."""
    c1, c2 = self.channels
    x = nn.relu(nn.Conv(c1, (3, 3), padding="SAME", name="Conv_0")(x))
    x = nn.relu(nn.Conv(c2, (3, 3), strides=2, padding="SAME", name="Conv_1")(x))
    return nn.Dense(self.n_classes, name="Dense_0")(x.reshape(x.shape[0], -1))


def init(key, c) -> dict:
  return CNN(tuple(c.channels), c.n_classes).init(key, jnp.zeros((1, 8, 8, 1)))


def apply(params: dict, x: jax.Array) -> jax.Array:
  """[B, 8, 8, 1] -> logits [B, 10]; the widths are read from the params."""
  p = params["params"]
  if x.ndim != 4 or x.shape[1:] != (8, 8, 1):
    raise ValueError(f"the digits CNN takes images [B, 8, 8, 1], got {x.shape}")
  channels = (p["Conv_0"]["kernel"].shape[-1], p["Conv_1"]["kernel"].shape[-1])
  return CNN(channels, p["Dense_0"]["kernel"].shape[-1]).apply(params, x)


def dataset(c: ml_collections.ConfigDict) -> dict:
  """The 1797 digits as [N, 8, 8, 1] images, pixels / 16, split at random (data.split_seed)."""
  from sklearn.datasets import load_digits
  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)[..., None]
  y = d.target.astype(np.int32)
  perm = np.random.default_rng(c.data.split_seed).permutation(len(y))
  n = int(round(c.data.train_frac * len(y)))
  return dict(train_x=x[perm[:n]], train_y=y[perm[:n]], test_x=x[perm[n:]], test_y=y[perm[n:]])
