"""SPD on a sequence model: a tiny Flax attention model with logits [B, T, V], masks per token,
the KL divergence, chunks over the batch."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
                  recon_layerwise_coeff=1.0))
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
    for name in ("stochastic_recon", "stochastic_recon_layerwise", "recon", "recon_layerwise"):
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
