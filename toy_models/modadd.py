"""One-layer modular-addition transformer (docs/methods/lib.md §5.5), in Flax linen.

Input: token ids [..., 3] = (a, b, '=') with '=' the id p; target (a + b) mod p at the last
position. d_model 128, 4 heads of 32, d_mlp 512, ReLU, no LayerNorm, attention without biases,
MLP with biases, unembedding without bias (the grokking model of Nanda et al.). Only the last
position's residual is computed after attention: it attends to all three positions, so the
causal mask is moot there.

Sequential view (node layers of the LIB mod-add build): `ln1.0` residual before attention
[3, d_model], `ln2.0` residual before the MLP at the last position [d_model], `unembed` final
residual [d_model], `output` logits [p].
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
NODES = ("ln1.0", "ln2.0", "unembed", "output")


def model_config(p: int = 113, d_model: int = 128, n_heads: int = 4, d_head: int = 32,
                 d_mlp: int = 512) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(kind="modadd", p=p, d_model=d_model, n_heads=n_heads,
                                        d_head=d_head, d_mlp=d_mlp))


def data_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(train_frac=0.3, split_seed=0, batch_size=383))


class Transformer(nn.Module):
  p: int = 113
  d_model: int = 128
  n_heads: int = 4
  d_head: int = 32
  d_mlp: int = 512

  def setup(self):
    init = nn.initializers.normal(1.0 / np.sqrt(self.d_model))
    self.tok = nn.Embed(self.p + 1, self.d_model, embedding_init=init)
    self.pos = self.param("pos", init, (3, self.d_model))
    heads = (self.n_heads, self.d_head)
    self.q = nn.DenseGeneral(heads, use_bias=False, name="W_Q")
    self.k = nn.DenseGeneral(heads, use_bias=False, name="W_K")
    self.v = nn.DenseGeneral(heads, use_bias=False, name="W_V")
    self.o = nn.DenseGeneral(self.d_model, axis=(-2, -1), use_bias=False, name="W_O")
    self.mlp_in = nn.Dense(self.d_mlp, name="mlp_in")
    self.mlp_out = nn.Dense(self.d_model, name="mlp_out")
    self.unembed_ = nn.Dense(self.p, use_bias=False, name="W_U")

  def embed(self, tokens):
    """[..., 3] int -> residual [..., 3, d_model]."""
    return self.tok(tokens) + self.pos

  def attention(self, r):
    """[..., 3, d_model] -> residual after attention at the last position [..., d_model]."""
    q = self.q(r[..., -1, :])                                  # [..., H, dh]
    k, v = self.k(r), self.v(r)                                # [..., T, H, dh]
    scores = jnp.einsum("...hd,...thd->...ht", q, k) / np.sqrt(self.d_head)
    z = jnp.einsum("...ht,...thd->...hd", jax.nn.softmax(scores, axis=-1), v)
    return r[..., -1, :] + self.o(z)

  def mlp(self, r):
    """[..., d_model] -> [..., d_model]."""
    return r + self.mlp_out(jax.nn.relu(self.mlp_in(r)))

  def mlp_preactivations(self, tokens):
    return self.mlp_in(self.attention(self.embed(tokens)))

  def unembed(self, r):
    return self.unembed_(r)

  def __call__(self, tokens):
    return self.unembed(self.mlp(self.attention(self.embed(tokens))))


def module(cfg) -> Transformer:
  return Transformer(cfg.p, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp)


def init(key, cfg) -> dict:
  return module(cfg).init(key, jnp.zeros((1, 3), jnp.int32))


def apply(params: dict, tokens: jax.Array) -> jax.Array:
  """tokens [..., 3] -> logits [..., p]."""
  chex.assert_axis_dimension(tokens, -1, 3)
  p = params["params"]["W_U"]["kernel"].shape[-1]
  d_model, n_heads, d_head = params["params"]["W_Q"]["kernel"].shape
  d_mlp = params["params"]["mlp_in"]["kernel"].shape[-1]
  return Transformer(p, d_model, n_heads, d_head, d_mlp).apply(params, tokens)


def relu_preactivations(params: dict, cfg, tokens: jax.Array) -> dict:
  """{layer name: pre-activations [N, d_mlp]} of the ReLUs (for firing-pattern degeneracy)."""
  return {"mlp": module(cfg).apply(params, tokens, method="mlp_preactivations")}


def dataset(c: ml_collections.ConfigDict) -> dict:
  """All p^2 pairs, split at random (split_seed) into train_frac train / rest test."""
  p = c.model.p
  a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
  x = np.stack([a.ravel(), b.ravel(), np.full(p * p, p)], axis=1).astype(np.int32)
  y = ((a + b) % p).ravel().astype(np.int32)
  perm = np.random.default_rng(c.data.split_seed).permutation(p * p)
  n = int(round(c.data.train_frac * p * p))
  tr, te = perm[:n], perm[n:]
  return dict(train_x=x[tr], train_y=y[tr], test_x=x[te], test_y=y[te])


def sequential_view(cfg) -> sequential.Sequential:
  """The four node layers of the LIB build as a sequential view of the Flax module."""
  return sequential.from_flax(module(cfg), input_method="embed",
                              methods=("attention", "mlp", "unembed"), names=NODES)


def dominant_frequencies(values: np.ndarray, p: int) -> list[dict]:
  """For feature values over all p² inputs (row a*p + b; [p², k]): the frequency k' in 1..p//2
  holding most of each feature's non-constant Fourier power over (a, b) (a pair (k_a, k_b)
  counts for max(k_a, k_b) folded to <= p/2), and that share of the power."""
  v = np.asarray(values, np.float64).reshape(p, p, -1)
  power = np.abs(np.fft.fft2(v, axes=(0, 1))) ** 2
  power[0, 0] = 0.0
  fold = np.minimum(np.arange(p), p - np.arange(p))
  freq = np.maximum(fold[:, None], fold[None, :])
  out = []
  for j in range(v.shape[-1]):
    per = np.bincount(freq.ravel(), weights=power[..., j].ravel(), minlength=p // 2 + 1)
    total = per.sum()
    k = int(np.argmax(per))
    out.append({"frequency": k, "share": float(per[k] / total) if total > 0 else 0.0})
  return out
