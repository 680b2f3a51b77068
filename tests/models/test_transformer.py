"""The decoder family and the BERT encoder at tiny sizes: forward and backward for every variant,
oracles for causality, padding, grouped-query heads and rotary positions, and the methods' view
of them (APD's masked passes keep every projection factored; one APD and one L3D step each)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paramdecomp.core import config as cfglib
from paramdecomp.core import factored, lowrank, train
from paramdecomp.methods import apd, l3d
from paramdecomp.models import bert, transformer

TINY = dict(vocab_size=13, max_len=8, d_model=16, n_layers=2, n_heads=4, d_mlp=24)
VARIANTS = {
    "gpt2": dict(),
    "llama": dict(norm="rmsnorm", positions="rotary", mlp="swiglu", tied=False, bias=False,
                  n_kv_heads=2),
    "mixed": dict(norm="rmsnorm", positions="learned", mlp="gelu_tanh", tied=False, d_head=6),
}


def _decoder(name, **kw):
  c = transformer.model_config(**{**TINY, **kw}, **VARIANTS[name])
  return c, transformer.init(jax.random.PRNGKey(0), c), transformer.make_apply(c)


def _tokens(key, n=3, t=8, v=13, low=0):
  return jax.random.randint(jax.random.PRNGKey(key), (n, t), low, v)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_decoder_forward_backward_and_causality(name):
  c, params, apply = _decoder(name)
  x = _tokens(1)
  y = apply(params, x)
  assert y.shape == (3, 8, 13) and bool(jnp.all(jnp.isfinite(y)))
  g = jax.grad(lambda p: jnp.mean(jax.nn.log_softmax(apply(p, x))[..., 0]))(params)
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(g))
  assert all(float(jnp.max(jnp.abs(v))) > 0 for v in jax.tree.leaves(g))   # every leaf is used
  # changing the token at position 5 leaves the logits before it as they were, and moves it
  x2 = x.at[:, 5].set((x[:, 5] + 1) % 13)
  y2 = apply(params, x2)
  np.testing.assert_allclose(y2[:, :5], y[:, :5], rtol=1e-5, atol=1e-6)
  assert float(jnp.max(jnp.abs(y2[:, 5:] - y[:, 5:]))) > 1e-4


def test_grouped_query_heads_equal_full_heads_with_repeated_key_value_kernels():
  c, params, apply = _decoder("llama")
  full = transformer.model_config(**TINY, **{**VARIANTS["llama"], "n_kv_heads": 4})
  p = jax.tree.map(lambda a: a, params)
  for i in range(c.n_layers):
    attn = p["params"][f"block_{i}"]["attn"]
    for nm in ("key", "value"):
      attn[nm]["kernel"] = jnp.repeat(attn[nm]["kernel"], 2, axis=1)   # [d, 2, dh] -> [d, 4, dh]
  x = _tokens(2)
  np.testing.assert_allclose(transformer.make_apply(full)(p, x), apply(params, x), rtol=1e-5,
                             atol=1e-6)


def test_rotary_scores_depend_only_on_the_relative_position():
  q, k = jax.random.normal(jax.random.PRNGKey(3), (2, 8))
  rq = transformer.rotary(jnp.broadcast_to(q, (1, 12, 1, 8)), 100.0)[0, :, 0]
  rk = transformer.rotary(jnp.broadcast_to(k, (1, 12, 1, 8)), 100.0)[0, :, 0]
  s = rq @ rk.T                                                # s[m, n] = <R_m q, R_n k>
  for d in (-3, 0, 2, 5):
    diag = jnp.diagonal(s, offset=d)
    np.testing.assert_allclose(diag, jnp.full_like(diag, diag[0]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(rq[0], q, rtol=1e-6)              # position 0 is not rotated
  assert float(jnp.abs(s[0, 1] - s[0, 4])) > 1e-3


def test_config_errors_name_the_field():
  with pytest.raises(cfglib.ConfigError, match="n_kv_heads"):
    transformer.spec(transformer.model_config(**TINY, n_kv_heads=3))
  with pytest.raises(cfglib.ConfigError, match="norm"):
    transformer.spec(transformer.model_config(**TINY, norm="batchnorm"))
  with pytest.raises(cfglib.ConfigError, match="d_head"):
    transformer.spec(transformer.model_config(**{**TINY, "d_model": 18}))
  with pytest.raises(cfglib.ConfigError, match="positions"):
    bert.encoder_spec(bert.model_config(positions="rotary"))


def _encoder(**kw):
  c = bert.model_config(**{**TINY, "norm_eps": 1e-12, **kw})
  return c, bert.init(jax.random.PRNGKey(0), c), bert.make_apply(c)


def test_encoder_is_bidirectional_and_ignores_padding():
  c, params, apply = _encoder()
  x = _tokens(4, t=5, low=1)                                   # no padding (pad_id = 0)
  h = apply(params, x)
  assert h.shape == (3, 5, 16)
  x2 = x.at[:, 4].set(x[:, 4] % 12 + 1)                        # a later token moves earlier ones
  assert float(jnp.max(jnp.abs(apply(params, x2)[:, 0] - h[:, 0]))) > 1e-4
  padded = jnp.concatenate([x, jnp.zeros((3, 3), x.dtype)], 1)
  np.testing.assert_allclose(apply(params, padded)[:, :5], h, rtol=1e-5, atol=1e-5)
  keep = padded != 0
  e = bert.mean_pool(apply(params, padded), keep)
  np.testing.assert_allclose(e, bert.mean_pool(h, jnp.ones((3, 5))), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jnp.linalg.norm(e, axis=-1), 1.0, rtol=1e-6)
  segs = jnp.ones_like(x)
  assert float(jnp.max(jnp.abs(bert.encode(c, params, x, x > 0, segs) - h))) > 1e-4
  g = jax.grad(lambda p: jnp.sum(bert.mean_pool(apply(p, padded), keep)[:, 0]))(params)
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(g))


PROJECTIONS = r".*/(query|key|value|out|fc_in|fc_out|gate|up|down|unembed)/kernel"


def _family(name):
  """One block is enough to meet every kind of projection (and compiles in half the time)."""
  if name == "bert":
    c, params, apply = _encoder(n_layers=1)
    return params, apply, _tokens(5, t=6, low=1)
  _, params, apply = _decoder(name, n_layers=1)
  return params, apply, _tokens(5, t=6)


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_apd_masked_passes_keep_every_projection_factored(name, monkeypatch):
  """Every attention / MLP projection (and the embedding) is met as a product with its view: no
  `_Factored.dense()` (the interpreter's dense fallback) while APD's loss is traced."""
  params, apply, x = _family(name)
  cfg = apd.default_config()
  cfg.update(dict(C=3, m=2, topk=1.0, decompose=(PROJECTIONS, r".*embed/embedding")))
  state = apd.init(jax.random.PRNGKey(1), params, cfg, apply=apply, x=x)
  views = {p: lowrank.view(f) for p, f in state.factors.items()}
  kv = 2 if name == "llama" else 4
  for p, v in views.items():   # DenseGeneral kernels in the views of their products
    if "attn" in p:
      want = {"query": (16, 16), "key": (16, 4 * kv), "value": (16, 4 * kv), "out": (16, 16)}
      assert v == want[p.split("/")[-2]], (p, v)
  densified = []
  orig = factored._Factored.dense
  monkeypatch.setattr(factored._Factored, "dense",
                      lambda self: densified.append(self.w.path) or orig(self))
  loss, met = apd.loss(state, params, x, jax.random.PRNGKey(2), apply=apply, cfg=cfg)
  assert np.isfinite(float(loss)) and len(state.factors) >= 5
  assert densified == []
  # the check can fail: a weight used elementwise is densified
  bad = lambda p, t: apply(p, t) + 0 * jnp.sum(p["params"]["block_0"]["attn"]["query"]["kernel"])
  apd.masked_apply(bad, params, state, jnp.ones((x.shape[0], cfg.C), jnp.float32), x)
  assert densified


# one family in the default suite (the masked-pass test above covers every family's projections)
@pytest.mark.parametrize("name", [pytest.param("gpt2", marks=pytest.mark.slow), "llama",
                                  pytest.param("bert", marks=pytest.mark.slow)])
def test_one_apd_and_one_l3d_step(name):
  params, apply, x = _family(name)
  bfn = lambda k: jax.random.randint(k, x.shape, 1, 13)
  opt = optax.adam(1e-3)
  cfg = apd.default_config()
  cfg.update(dict(C=3, m=2, topk=1.0, decompose=(PROJECTIONS,)))
  st = apd.init(jax.random.PRNGKey(1), params, cfg, apply=apply, x=x)
  out = train.fit(train.init_state(st, opt, jax.random.PRNGKey(2)), params,
                  apd.make_update(apply, cfg, bfn, opt), total_steps=2, workdir=None,
                  log_every=0, steps_per_dispatch=2, quiet=True)
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), out.params, st)
  assert max(jax.tree.leaves(moved)) > 0
  lc = l3d.default_config()
  lc.update(dict(n_subnets=2, topk=0.5, sequence=True, decompose=(r".*attn/.*kernel",)))
  ls = l3d.init(jax.random.PRNGKey(3), params, lc)
  lo = train.fit(train.init_state(ls, opt, jax.random.PRNGKey(4)), params,
                 l3d.make_update(apply, lc, bfn, opt), total_steps=2, workdir=None,
                 log_every=0, steps_per_dispatch=2, quiet=True)
  loss, _ = l3d.loss(lo.params, params, x, jax.random.PRNGKey(5), apply=apply, cfg=lc)
  assert np.isfinite(float(loss))


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_sequential_view_is_the_model_per_sample_and_batched(name):
  from paramdecomp.core import sequential
  c, params, apply = _decoder(name)
  seq = transformer.sequential_view(c)
  assert seq.names == ("resid0", "resid1", "resid2", "logits")
  x = _tokens(6)
  np.testing.assert_allclose(sequential.apply(seq, params, x), apply(params, x), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(sequential.apply(seq, params, x[1]), apply(params, x[1:2])[0],
                             rtol=1e-5, atol=1e-6)
  nodes = [jax.ShapeDtypeStruct(a.shape[1:], a.dtype)
           for a in sequential.node_activations(seq, params, x)]
  sequential.check_bias_folding(seq, params, nodes)   # every constant term is a folded leaf
