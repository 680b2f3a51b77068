"""A bidirectional BERT-style encoder on the decoder's attention and MLP blocks: token, position
and segment embeddings summed and normalised, then post-norm blocks h = ln1(h + attn h),
h = ln2(h + mlp h); output the last hidden states [B, T, d].

Padding: with `pad_id` >= 0, keys equal to it are masked out of attention (the BERT attention
mask), so ``apply(params, tokens)`` alone serves a method; `encode` takes an explicit mask and
segments. `mean_pool` gives sentence embeddings (all-MiniLM-L6-v2's mean-pooled, normalised
output).

Parameter names: ``embed``, ``pos_embed``, ``seg_embed`` (``/embedding``), ``ln_embed``,
``block_{i}/attn/{query,key,value,out}``, ``block_{i}/ln1``, ``block_{i}/mlp/{fc_in,fc_out}``,
``block_{i}/ln2``.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from paramdecomp.core import config as cfglib
from paramdecomp.models.transformer import INIT, MLP, Attention, Spec, norm, spec


def model_config(**kw) -> ml_collections.ConfigDict:
  """The encoder's config (kind 'bert'); the defaults are BERT's choices at a tiny size."""
  c = ml_collections.ConfigDict(dict(
      kind="bert", vocab_size=128, max_len=64, type_vocab_size=2, d_model=32, n_layers=2,
      n_heads=4, n_kv_heads=0, d_head=0, d_mlp=64, norm="layernorm", norm_eps=1e-12,
      positions="learned", rope_base=10000.0, mlp="gelu", tied=True, bias=True, pad_id=0))
  c.update(kw)
  return c


def encoder_spec(c: ml_collections.ConfigDict) -> Spec:
  cfglib.require(c.positions == "learned", "positions",
                 f"the BERT encoder has learned positions, got {c.positions!r}")
  cfglib.positive(c, "type_vocab_size")
  return spec(c)


class EncoderBlock(nn.Module):
  s: Spec

  @nn.compact
  def __call__(self, h, keep):
    h = norm(self.s, "ln1")(h + Attention(self.s, causal=False, name="attn")(h, keep))
    return norm(self.s, "ln2")(h + MLP(self.s, name="mlp")(h))


class Encoder(nn.Module):
  """tokens [B, T] -> hidden states [B, T, d]; keep [B, T] bool (None: from pad_id), segments
  [B, T] int (None: all 0)."""
  s: Spec

  @nn.compact
  def __call__(self, tokens, keep=None, segments=None):
    s = self.s
    if keep is None and s.pad_id >= 0:
      keep = tokens != s.pad_id
    if segments is None:
      segments = jnp.zeros_like(tokens)
    emb = lambda n, nm: nn.Embed(n, s.d_model, embedding_init=INIT, name=nm)
    h = (emb(s.vocab_size, "embed")(tokens)
         + emb(s.max_len, "pos_embed")(jnp.arange(tokens.shape[1]))
         + emb(s.type_vocab_size, "seg_embed")(segments))
    h = norm(s, "ln_embed")(h)
    for i in range(s.n_layers):
      h = EncoderBlock(s, name=f"block_{i}")(h, keep)
    return h


def init(key, c: ml_collections.ConfigDict) -> dict:
  return Encoder(encoder_spec(c)).init(key, jnp.ones((1, min(c.max_len, 8)), jnp.int32))


def template(c: ml_collections.ConfigDict) -> dict:
  """The params' `jax.ShapeDtypeStruct`s (what the importer fills)."""
  return jax.eval_shape(lambda k: init(k, c), jax.random.PRNGKey(0))


def make_apply(c: ml_collections.ConfigDict):
  """``apply(params, tokens [B, T]) -> hidden [B, T, d]`` (padding masked by pad_id)."""
  mod = Encoder(encoder_spec(c))

  def apply(params, tokens):
    if tokens.shape[-1] > c.max_len:
      raise ValueError(f"{tokens.shape[-1]} tokens exceed max_len = {c.max_len}")
    return mod.apply(params, tokens)

  return apply


def encode(c: ml_collections.ConfigDict, params, tokens, keep, segments=None):
  """Hidden states [B, T, d] with an explicit attention mask keep [B, T] (1 = a real token)."""
  return Encoder(encoder_spec(c)).apply(params, tokens, keep.astype(bool), segments)


def mean_pool(hidden: jax.Array, keep: jax.Array, normalise: bool = True) -> jax.Array:
  """[B, T, d], [B, T] -> [B, d]: the mean over real tokens, unit-normalised (sentence-
  transformers' Pooling(mean) + Normalize)."""
  w = keep.astype(hidden.dtype)[..., None]
  e = jnp.sum(hidden * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1e-9)
  if normalise:
    e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
  return e
