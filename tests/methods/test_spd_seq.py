"""SPD on a sequence model: a tiny Flax attention model with logits [B, T, V], masks per token,
the KL divergence, chunks over the batch."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paramdecomp.core import pytree
from paramdecomp.core.lowrank import Factors
from paramdecomp.methods import spd, spd_ci

V, T, DM, C = 11, 5, 8, 8


class Tiny(nn.Module):
  @nn.compact
  def __call__(self, ids):
    h = nn.Embed(V, DM)(ids)
    h = h + nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=DM)(h, h)
    return nn.Dense(V)(jax.nn.relu(h))


MODEL = Tiny()
apply = MODEL.apply
PATTERNS = ("params/Embed_0/embedding", "params/MultiHeadDotProductAttention_0/.*/kernel",
            "params/Dense_0/kernel")


def _setup(B=4):
  ids = jax.random.randint(jax.random.PRNGKey(0), (B, T), 0, V)
  params = MODEL.init(jax.random.PRNGKey(1), ids)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
  cfg = spd.default_config()
  cfg.update(dict(decompose=PATTERNS, C=C, d_gate=0, divergence="kl", recon_coeff=1.0,
                  recon_layerwise_coeff=1.0, embedding_recon_coeff=1.0))
  st = spd.init(jax.random.PRNGKey(2), params, cfg, apply=apply, x=ids)
  return ids, params, cfg, st


def _exact(params, st):
  """Every weight's matrix view from its SVD as C >= rank rank-one pieces (zeros beyond)."""
  ws = pytree.get(params, list(st.sub))
  sub = {}
  for p, f in st.sub.items():
    a, b = f.U.shape[1], f.V.shape[1]
    u, s, vt = jnp.linalg.svd(ws[p].reshape(a, b), full_matrices=False)
    r = s.shape[0]
    U = jnp.zeros((C, a, 1)).at[:r, :, 0].set((u * s).T)
    Vv = jnp.zeros((C, b, 1)).at[:r, :, 0].set(vt)
    sub[p] = Factors(U, Vv)
  return sub


def test_per_token_masks_and_zero_losses_at_an_exact_decomposition_with_importance_one():
  ids, params, cfg, st = _setup()
  ss = spd.sites(apply, params, ids, list(st.sub))
  assert len(ss) == 6 and any(s.lookup for s in ss)
  g = spd.causal_importances(apply, params, st, ids, cfg)
  assert all(v.shape == (4, T, C) for v in g.values())          # one mask per token
  ones = spd_ci.Affine(jnp.zeros(C), jnp.ones(C))
  exact = st._replace(sub=_exact(params, st), ci={s: ones for s in st.ci})
  f = jax.jit(lambda s, k: spd.loss(s, params, ids, k, apply=apply, cfg=cfg))
  for k in range(2):
    _, m = f(exact, jax.random.PRNGKey(k))
    assert float(m["faithfulness"]) < 1e-28
    for name in ("stochastic_recon", "stochastic_recon_layerwise", "recon", "recon_layerwise",
                 "embedding_recon"):
      assert abs(float(m[name])) < 1e-13, (name, m[name])
    np.testing.assert_allclose(m["importance_minimality"], len(ss) * C)
  # the random init is far from the target: the KL sees it
  _, m = f(st, jax.random.PRNGKey(0))
  assert float(m["stochastic_recon"]) > 1e-3


def test_kl_is_summed_over_the_vocabulary_and_averaged_over_tokens():
  y = jax.random.normal(jax.random.PRNGKey(3), (2, 3, V))
  t = jax.random.normal(jax.random.PRNGKey(4), (2, 3, V))
  lp, lq = jax.nn.log_softmax(t, -1), jax.nn.log_softmax(y, -1)
  want = np.mean([[np.sum(np.exp(lp[b, i]) * (lp[b, i] - lq[b, i])) for i in range(3)]
                  for b in range(2)])
  np.testing.assert_allclose(spd.divergence(y, t, "kl"), want, rtol=1e-12)


def test_chunked_losses_and_gradients_equal_the_whole_batch():
  ids, params, cfg, st = _setup(B=4)
  cfg.recon_layerwise_coeff = 0.0
  chunked = spd.default_config()
  chunked.update(cfg.to_dict())
  chunked.chunk_size = 2
  f = lambda c: jax.jit(jax.value_and_grad(
      lambda s: spd.loss(s, params, ids, jax.random.PRNGKey(5), apply=apply, cfg=c),
      has_aux=True))
  (v1, m1), g1 = f(cfg)(st)
  (v2, m2), g2 = f(chunked)(st)
  np.testing.assert_allclose(v2, v1, rtol=1e-10)
  assert m1["stochastic_recon"] > 1e-3
  for k in ("stochastic_recon", "stochastic_recon_layerwise", "recon"):
    np.testing.assert_allclose(m2[k], m1[k], rtol=1e-10)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-12)


def test_embedding_recon_against_per_position_dense_tables():
  ids, params, cfg, st = _setup()
  ss = spd.sites(apply, params, ids, list(st.sub))
  emb = next(s for s in ss if s.lookup)
  _, _, _, found = spd.target_pass(apply, params, st, ids, ss)
  assert set(found) == {emb.name}
  m = {emb.name: jax.random.uniform(jax.random.PRNGKey(5), ids.shape + (C,), jnp.float64)}
  got = spd.embedding_recon(params, st, ss, found, m)
  f = st.sub[emb.path]
  table = np.asarray(pytree.get(params, [emb.path])[emb.path])          # [V, DM]
  want = []
  for b in range(ids.shape[0]):
    for t in range(T):
      masked = sum(float(m[emb.name][b, t, c]) * np.outer(f.U[c, :, 0], f.V[c, :, 0])
                   for c in range(C))
      masked = masked if emb.axis == 0 else masked.T
      want.append(np.sum((masked[ids[b, t]] - table[ids[b, t]]) ** 2))
  np.testing.assert_allclose(got, np.mean(want), rtol=1e-10)
  # the loss's term (zero at an exact decomposition with importance one: the test above) sees
  # the random init
  _, metrics = spd.loss(st, params, ids, jax.random.PRNGKey(0), apply=apply, cfg=cfg)
  assert float(metrics["embedding_recon"]) > 1e-3


def test_embedding_recon_without_a_decomposed_embedding_fails_naming_the_field():
  ids, params, cfg, _ = _setup()
  cfg.update(dict(decompose=("params/Dense_0/kernel",), embedding_recon_coeff=1.0))
  st = spd.init(jax.random.PRNGKey(2), params, cfg, apply=apply, x=ids)
  with pytest.raises(ValueError, match="embedding_recon_coeff > 0 needs a decomposed embedding"):
    spd.loss(st, params, ids, jax.random.PRNGKey(0), apply=apply, cfg=cfg)
