"""A config-driven decoder-only transformer family in Flax linen: the pieces of both model lines a
user brings (GPT-2: LayerNorm, learned positions, GELU MLP, biases, tied unembedding; Llama:
RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention, no biases, untied unembedding).

Every weight enters the forward pass as one product with its matrix view, so the factored
interpreter (`paramdecomp.core.factored`) keeps decomposed weights as factors there: the
attention projections are DenseGeneral kernels (query [d, H, dh], key / value [d, H_kv, dh],
out [H, dh, d], views (d, H dh) and (H dh, d)), the MLP and unembedding Dense kernels, the
embeddings lookups (a tied unembedding is the table's `attend`). Heads are shared across
grouped queries by repeating the key / value *activations*, never the weights.

Parameter names (the importer's tables, `paramdecomp.models.importer`, map onto them):
``embed/embedding``, ``pos_embed/embedding`` (learned), ``block_{i}/{ln1,ln2}/{scale,bias}``,
``block_{i}/attn/{query,key,value,out}/{kernel,bias}``, ``block_{i}/mlp/{fc_in,fc_out}`` (GELU)
or ``{gate,up,down}`` (SwiGLU), ``ln_f``, ``unembed/kernel`` (untied).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from paramdecomp.core import config as cfglib
from paramdecomp.core import sequential

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rotary", "none")
MLPS = ("gelu", "gelu_tanh", "swiglu")
INIT = nn.initializers.normal(0.02)   # GPT-2's; keeps tied logits O(1) at init


def model_config(**kw) -> ml_collections.ConfigDict:
  """The decoder's config (its defaults are the schema; `kind` = 'transformer')."""
  c = ml_collections.ConfigDict(dict(
      kind="transformer", vocab_size=256, max_len=128, d_model=64, n_layers=2, n_heads=4,
      n_kv_heads=0,          # 0: as many as n_heads (no grouping)
      d_head=0,              # 0: d_model // n_heads
      d_mlp=256, norm="layernorm", norm_eps=1e-5, positions="learned", rope_base=10000.0,
      mlp="gelu", tied=True, bias=True))
  c.update(kw)
  return c


@dataclasses.dataclass(frozen=True)
class Spec:
  """The resolved, hashable form of a model config (a Flax module field)."""
  vocab_size: int
  max_len: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  d_head: int
  d_mlp: int
  norm: str = "layernorm"
  norm_eps: float = 1e-5
  positions: str = "learned"
  rope_base: float = 10000.0
  mlp: str = "gelu"
  tied: bool = True
  bias: bool = True
  type_vocab_size: int = 0   # the encoder's segments (0: none)
  pad_id: int = -1           # the encoder's padding token (-1: no padding mask)


def spec(c: ml_collections.ConfigDict) -> Spec:
  """Validate a config (errors name the field) and resolve its defaults."""
  cfglib.one_of(c, "norm", NORMS)
  cfglib.one_of(c, "positions", POSITIONS)
  cfglib.one_of(c, "mlp", MLPS)
  cfglib.positive(c, "vocab_size", "max_len", "d_model", "n_layers", "n_heads", "d_mlp")
  kv = c.n_kv_heads or c.n_heads
  cfglib.require(c.n_heads % kv == 0, "n_kv_heads",
                 f"{kv} does not divide n_heads = {c.n_heads}")
  dh = c.d_head or c.d_model // c.n_heads
  cfglib.require(c.d_head or c.d_model % c.n_heads == 0, "d_head",
                 f"0 (d_model // n_heads) needs n_heads to divide d_model = {c.d_model}")
  if c.positions == "rotary":
    cfglib.require(dh % 2 == 0, "d_head", f"rotary positions need an even d_head, got {dh}")
  fields = {f.name for f in dataclasses.fields(Spec)}
  kw = {k: v for k, v in c.items() if k in fields}
  return Spec(**{**kw, "n_kv_heads": kv, "d_head": dh})


def norm(s: Spec, name: str) -> nn.Module:
  if s.norm == "rmsnorm":
    return nn.RMSNorm(epsilon=s.norm_eps, name=name)
  return nn.LayerNorm(epsilon=s.norm_eps, name=name)


def rotary(x: jax.Array, base: float) -> jax.Array:
  """Rotary positions on [B, T, H, dh] (the rotate-half pairing (i, i + dh/2) of GPT-NeoX and
  Hugging Face's Llama, so their checkpoints import as they are)."""
  t, dh = x.shape[1], x.shape[-1]
  inv = 1.0 / base ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh)
  ang = jnp.arange(t, dtype=jnp.float32)[:, None] * inv[None, :]          # [T, dh/2]
  cos = jnp.cos(jnp.concatenate([ang, ang], -1))[None, :, None, :].astype(x.dtype)
  sin = jnp.sin(jnp.concatenate([ang, ang], -1))[None, :, None, :].astype(x.dtype)
  x1, x2 = x[..., :dh // 2], x[..., dh // 2:]
  return x * cos + jnp.concatenate([-x2, x1], -1) * sin


class Attention(nn.Module):
  """Multi-head (grouped-query) self-attention: [B, T, d] -> [B, T, d].

  causal: mask future keys; keep: [B, T] bool, the keys that are not padding (None: all)."""
  s: Spec
  causal: bool = True

  @nn.compact
  def __call__(self, x, keep=None):
    s = self.s
    dense = lambda f, nm: nn.DenseGeneral(f, use_bias=s.bias, kernel_init=INIT, name=nm)
    q = dense((s.n_heads, s.d_head), "query")(x)
    k = dense((s.n_kv_heads, s.d_head), "key")(x)
    v = dense((s.n_kv_heads, s.d_head), "value")(x)
    if s.positions == "rotary":
      q, k = rotary(q, s.rope_base), rotary(k, s.rope_base)
    if s.n_kv_heads != s.n_heads:   # each key / value head serves a group of query heads
      rep = s.n_heads // s.n_kv_heads
      k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(s.d_head, q.dtype))
    t = x.shape[1]
    allowed = jnp.tril(jnp.ones((t, t), bool)) if self.causal else jnp.ones((t, t), bool)
    allowed = allowed[None, None]
    if keep is not None:
      allowed = allowed & keep[:, None, None, :]
    scores = jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)
    o = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
    return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), use_bias=s.bias, kernel_init=INIT,
                           name="out")(o)


class MLP(nn.Module):
  """GELU (exact or tanh) MLP fc_in -> fc_out, or SwiGLU down(silu(gate x) * up x)."""
  s: Spec

  @nn.compact
  def __call__(self, x):
    s = self.s
    dense = lambda f, nm: nn.Dense(f, use_bias=s.bias, kernel_init=INIT, name=nm)
    if s.mlp == "swiglu":
      h = jax.nn.silu(dense(s.d_mlp, "gate")(x)) * dense(s.d_mlp, "up")(x)
      return dense(x.shape[-1], "down")(h)
    h = jax.nn.gelu(dense(s.d_mlp, "fc_in")(x), approximate=s.mlp == "gelu_tanh")
    return dense(x.shape[-1], "fc_out")(h)


class DecoderBlock(nn.Module):
  """Pre-norm block: h + attn(ln1 h), then h + mlp(ln2 h)."""
  s: Spec

  @nn.compact
  def __call__(self, h):
    h = h + Attention(self.s, causal=True, name="attn")(norm(self.s, "ln1")(h))
    return h + MLP(self.s, name="mlp")(norm(self.s, "ln2")(h))


class Decoder(nn.Module):
  """tokens [B, T] int -> logits [B, T, vocab_size]; `embed_in`, `layer` and `head` are the
  pieces of the sequential view (node 0: the embedded tokens, node i + 1: the residual stream
  after block i, last: the logits)."""
  s: Spec

  def setup(self):
    s = self.s
    self.embed = nn.Embed(s.vocab_size, s.d_model, embedding_init=INIT, name="embed")
    if s.positions == "learned":
      self.pos_embed = nn.Embed(s.max_len, s.d_model, embedding_init=INIT, name="pos_embed")
    self.blocks = [DecoderBlock(s, name=f"block_{i}") for i in range(s.n_layers)]
    self.ln_f = norm(s, "ln_f")
    if not s.tied:
      self.unembed = nn.Dense(s.vocab_size, use_bias=False, kernel_init=INIT, name="unembed")

  def embed_in(self, tokens):
    h = self.embed(tokens)
    if self.s.positions == "learned":
      h = h + self.pos_embed(jnp.arange(tokens.shape[-1]))
    return h

  def layer(self, h, i: int):
    return self.blocks[i](h)

  def head(self, h):
    h = self.ln_f(h)
    return self.embed.attend(h) if self.s.tied else self.unembed(h)

  def __call__(self, tokens):
    h = self.embed_in(tokens)
    for i in range(self.s.n_layers):
      h = self.layer(h, i)
    return self.head(h)


def init(key, c: ml_collections.ConfigDict) -> dict:
  """Variables {'params': ...} of the decoder of config c."""
  return Decoder(spec(c)).init(key, jnp.zeros((1, min(c.max_len, 8)), jnp.int32))


def template(c: ml_collections.ConfigDict) -> dict:
  """The params' shapes and dtypes (`jax.ShapeDtypeStruct`s, nothing computed): what the
  importer fills."""
  return jax.eval_shape(lambda k: init(k, c), jax.random.PRNGKey(0))


def make_apply(c: ml_collections.ConfigDict):
  """``apply(params, tokens [B, T]) -> logits [B, T, V]`` of config c (T <= max_len)."""
  mod = Decoder(spec(c))

  def apply(params, tokens):
    if tokens.shape[-1] > c.max_len and c.positions == "learned":
      raise ValueError(f"{tokens.shape[-1]} tokens exceed max_len = {c.max_len}")
    return mod.apply(params, tokens)

  return apply


def _any_lead(fn):
  """fn on [B, T, d] -> fn on [..., T, d] (one sample or any leading axes: LIB's layers)."""
  def g(params, f):
    y = fn(params, f.reshape((-1,) + f.shape[-2:]))
    return y.reshape(f.shape[:-2] + y.shape[-2:])
  return g


def sequential_view(c: ml_collections.ConfigDict):
  """The decoder as a `core.sequential.Sequential` for LIB: input_fn embeds the tokens (node
  'resid0'), one layer per block ('resid{i+1}'), the last the final norm and unembedding
  ('logits'). Biases (LayerNorm's too) are the leaves named 'bias'."""
  mod = Decoder(spec(c))
  layers = [_any_lead((lambda i: lambda p, f: mod.apply(p, f, i, method="layer"))(i))
            for i in range(c.n_layers)]
  layers.append(_any_lead(lambda p, f: mod.apply(p, f, method="head")))
  names = tuple(f"resid{i}" for i in range(c.n_layers + 1)) + ("logits",)
  return sequential.from_functions(layers, names,
                                   lambda p, x: mod.apply(p, x, method="embed_in"),
                                   bias_pattern=r"(.*/)?bias")


def n_params(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
