"""L3D oracles (docs/methods/oracles.md §6.4): closed-form gradients, the two paths against each
other, Tucker blocks against mode products, top-k against a sort, references, normalisation,
interventions."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paramdecomp.methods import l3d
from paramdecomp.core import sparsity, train
from paramdecomp.core.checkpoint import Checkpointer
from paramdecomp.methods import l3d_measures as ms
from paramdecomp.core.config import ConfigError
from paramdecomp.toy_models import circuits, data, registry, squares, tms
from paramdecomp.runs import targets as training


def _cfg(**kw):
  c = l3d.default_config()
  c.update(kw)
  return c


def _tm1(key, dtype=jnp.float64):
  ks = jax.random.split(key, 3)
  return {"W_in": jax.random.normal(ks[0], (2, 5), dtype),
          "W_out": jax.random.normal(ks[1], (5, 2), dtype),
          "b": 0.1 * jax.random.normal(ks[2], (5,), dtype)}


def _linear(params, x):
  return x @ params["W"].T


def _outputs(apply, params, x, key, cfg):
  y0 = apply(params, x)
  return y0, l3d.references(key, y0, cfg.reference, cfg.sequence)


# ------------------------------------------------------------------------------------ divergences

def test_surrogate_gradient_is_the_half_mean_squared_error_gradient():
  params = _tm1(jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (5,))
  y0 = tms.apply_untied(params, x)
  y_ref = jax.random.uniform(jax.random.PRNGKey(2), (5,))
  sur = jax.grad(lambda p: l3d.divergence(tms.apply_untied(p, x), y0, y_ref))(params)
  mse = jax.grad(lambda p: jnp.sum((tms.apply_untied(p, x) - y_ref) ** 2) / (2 * 5))(params)
  for p in params:
    np.testing.assert_allclose(sur[p], mse[p], rtol=1e-12, atol=1e-14)


def test_kl_divergence_gradient_matches_autodiff_of_the_kl():
  w = {"W": jax.random.normal(jax.random.PRNGKey(0), (4, 3))}
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 3))  # 3 positions of one sequence sample
  y_ref = jax.random.normal(jax.random.PRNGKey(2), (3, 4))
  y0 = _linear(w, x)
  got = jax.grad(lambda p: l3d.divergence(_linear(p, x), y0, y_ref, "kl"))(w)["W"]

  def kl(p):
    pr = jax.nn.softmax(y_ref)
    return jnp.mean(jnp.sum(pr * (jnp.log(pr) - jax.nn.log_softmax(_linear(p, x))), axis=-1))

  np.testing.assert_allclose(got, jax.grad(kl)(w)["W"], rtol=1e-12)


def test_linear_model_per_sample_gradient_is_rank_one_closed_form():
  w = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
  x = jax.random.normal(jax.random.PRNGKey(1), (6, 4))
  cfg = _cfg()
  y0, y_ref = _outputs(_linear, {"W": w}, x, jax.random.PRNGKey(2), cfg)
  g = l3d.gradients(_linear, {"W": w}, x, y0, y_ref, ["W"], cfg)["W"]
  want = jnp.einsum("bo,bi->boi", (x @ w.T - y_ref) / 3, x)
  np.testing.assert_allclose(g, want, rtol=1e-12)


def test_tm1_closed_form_gradients():
  """§3.5: with only feature i active, dD/dW_in[:, j] = (W_out^T delta) x_j, dD/dW_out[o, :] =
  delta_o (x_i W_in[:, i])^T, dD/db = delta, delta_o = (f_o - y_r,o) 1[pre_o > 0] / n_o; with the
  residual on output i alone, the gradient lives on {W_in[:, i], W_out[i, :], b_i}."""
  params = _tm1(jax.random.PRNGKey(3))
  params["b"] = jnp.full((5,), 0.2)  # every pre-activation positive on these inputs
  i, xi = 2, 0.7
  x = (xi * jax.nn.one_hot(i, 5))[None]
  y0 = tms.apply_untied(params, x)
  cfg = _cfg()
  for y_ref in (jax.random.uniform(jax.random.PRNGKey(4), (1, 5)),
                y0 - 0.3 * jax.nn.one_hot(i, 5)[None]):
    g = l3d.gradients(tms.apply_untied, params, x, y0, y_ref, ["W_in", "W_out", "b"], cfg)
    pre = x @ params["W_in"].T @ params["W_out"].T + params["b"]
    delta = ((y0 - y_ref) * (pre > 0) / 5)[0]
    h = xi * params["W_in"][:, i]
    np.testing.assert_allclose(g["b"][0], delta, rtol=1e-12)
    np.testing.assert_allclose(g["W_out"][0], jnp.outer(delta, h), rtol=1e-12)
    np.testing.assert_allclose(g["W_in"][0], jnp.outer(params["W_out"].T @ delta, x[0]),
                               rtol=1e-12, atol=1e-15)
  # the last y_ref leaves a residual on output i only: the support of §3.5
  np.testing.assert_allclose(g["W_in"][0][:, i], delta[i] * xi * params["W_out"][i], rtol=1e-12)
  np.testing.assert_allclose(g["W_out"][0][i], delta[i] * xi * params["W_in"][:, i], rtol=1e-12)
  off = (jnp.sum(g["W_in"][0] ** 2) - jnp.sum(g["W_in"][0][:, i] ** 2)
         + jnp.sum(g["W_out"][0] ** 2) - jnp.sum(g["W_out"][0][i] ** 2)
         + jnp.sum(g["b"][0] ** 2) - g["b"][0][i] ** 2)
  assert abs(float(off)) < 1e-25


# --------------------------------------------------------------------------------- Tucker blocks

@pytest.mark.parametrize("shape,rank", [((7,), 2), ((4, 6), 2), ((3, 4, 5), 2), ((2, 3, 2, 4), 3)])
def test_tucker_blocks_equal_explicit_mode_products(shape, rank):
  t = l3d.init_tucker(jax.random.PRNGKey(0), shape, 3, rank, jnp.float64)
  got = l3d.blocks_of(t)
  for k in range(3):
    want = t.core[k]
    for u in t.factors:  # mode product: contract the leading rank axis, append the new mode
      want = jnp.tensordot(want, u[k], axes=([0], [0]))
    np.testing.assert_allclose(got[k], want, rtol=1e-12)
  assert got.shape == (3,) + shape


def test_tucker_matrix_block_has_rank_at_most_r():
  t = l3d.init_tucker(jax.random.PRNGKey(1), (8, 9), 4, 2, jnp.float64)
  for b in l3d.blocks_of(t):
    assert np.linalg.matrix_rank(np.asarray(b), tol=1e-10) <= 2
  assert l3d.init_tucker(jax.random.PRNGKey(1), (3, 9), 2, 5).core.shape == (2, 3, 5)


def test_init_copies_the_normalised_decoder_into_the_encoder():
  params = _tm1(jax.random.PRNGKey(0))
  st = l3d.init(jax.random.PRNGKey(1), params, _cfg(n_subnets=4, rank=2))
  assert isinstance(st, l3d.State)
  np.testing.assert_allclose(l3d.subnet_norms(st.dec), np.ones(4), rtol=1e-12)
  for a, b in zip(jax.tree.leaves(st.enc), jax.tree.leaves(st.dec)):
    np.testing.assert_array_equal(a, b)
  assert list(st.dec) == ["W_in", "W_out", "b"]


# ------------------------------------------------------------------------------------------ top-k

@pytest.mark.parametrize("frac", [0.1, 0.25, 0.999, 1.0])
def test_fraction_threshold_against_a_sort(frac):
  s = jax.random.uniform(jax.random.PRNGKey(0), (32, 10))
  n = int(frac * s.size)
  tau = sparsity.fraction_threshold(s, frac)
  assert float(tau) == float(jnp.sort(s.ravel())[::-1][n - 1])
  assert int(sparsity.fraction_topk_mask(s, frac).sum()) == n


def test_fraction_topk_keeps_ties_and_rejects_empty_selection():
  s = jnp.array([[3.0, 1.0], [1.0, 0.0]])
  assert int(sparsity.fraction_topk_mask(s, 0.5).sum()) == 3  # tau = 1, both ones kept
  with pytest.raises(ValueError, match="floor"):
    sparsity.fraction_threshold(s, 0.2)


# ------------------------------------------------------------------------------------ references

def test_batch_references_are_outputs_of_the_batch_drawn_uniformly():
  y0 = jnp.arange(8.0)[:, None] * jnp.ones((8, 3))
  refs = jax.vmap(lambda k: l3d.references(k, y0, "batch"))(
      jax.random.split(jax.random.PRNGKey(0), 4000))
  idx = np.asarray(refs[..., 0]).astype(int)                    # [draws, B]: which sample
  np.testing.assert_array_equal(refs, y0[idx])
  freq = np.bincount(idx.ravel(), minlength=8) / idx.size
  assert np.all(np.abs(freq - 1 / 8) < 0.01)                      # ~6 s.e. of 32000 draws
  assert np.mean(idx == np.arange(8)) > 0.1                       # with replacement: itself too


def test_mean_and_sequence_references():
  y0 = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 5))
  np.testing.assert_allclose(l3d.references(None, y0, "mean", sequence=True),
                             jnp.broadcast_to(y0.reshape(12, 5).mean(0), y0.shape), rtol=1e-12)
  r = l3d.references(jax.random.PRNGKey(1), y0, "batch", sequence=True)
  pool = np.asarray(y0.reshape(12, 5))
  for row in np.asarray(r).reshape(12, 5):
    assert np.any(np.all(np.isclose(pool, row), axis=1))
  with pytest.raises(ValueError, match="sequence"):
    l3d.references(jax.random.PRNGKey(1), y0[:, 0], "batch", sequence=True)


@pytest.mark.parametrize("name", ["zero", "constant"])
def test_zero_reference_gives_the_output_itself_or_the_kl_to_uniform(name):
  """§3.1's first candidate: g_i of the squared error is J_i^T f(x_i) / n_o (linear model:
  f(x_i) x_i^T / n_o); for 'kl' the reference distribution is uniform."""
  w = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
  x = jax.random.normal(jax.random.PRNGKey(1), (6, 4))
  cfg = _cfg()
  cfg.reference = name
  y0, y_ref = _outputs(_linear, {"W": w}, x, jax.random.PRNGKey(2), cfg)
  g = l3d.gradients(_linear, {"W": w}, x, y0, y_ref, ["W"], cfg)["W"]
  np.testing.assert_allclose(g, jnp.einsum("bo,bi->boi", x @ w.T / 3, x), rtol=1e-12)
  cfg.divergence = "kl"
  g = l3d.gradients(_linear, {"W": w}, x, y0, y_ref, ["W"], cfg)["W"]
  kl = lambda w, xi: jnp.sum(jnp.log(1 / 3) - jax.nn.log_softmax(w @ xi)) / 3
  np.testing.assert_allclose(g, jax.vmap(jax.grad(kl), (None, 0))(w, x), rtol=1e-10)


def test_uniform_and_mean_references():
  """'uniform' is log(1/n_o) logits: under kl the same gradients as 'zero', under mse
  J^T (f + log n_o) / n_o; 'mean' is the batch mean: g_i = (f_i - mean f) x_i^T / n_o."""
  w = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
  x = jax.random.normal(jax.random.PRNGKey(1), (6, 4))
  grads = {}
  for ref in ("uniform", "zero", "mean"):
    for div in ("mse", "kl"):
      cfg = _cfg(reference=ref, divergence=div)
      y0, y_ref = _outputs(_linear, {"W": w}, x, jax.random.PRNGKey(2), cfg)
      grads[ref, div] = l3d.gradients(_linear, {"W": w}, x, y0, y_ref, ["W"], cfg)["W"]
  np.testing.assert_allclose(grads["uniform", "kl"], grads["zero", "kl"], rtol=1e-10)
  y = x @ w.T
  np.testing.assert_allclose(grads["uniform", "mse"],
                             jnp.einsum("bo,bi->boi", (y + jnp.log(3.0)) / 3, x), rtol=1e-12)
  np.testing.assert_allclose(grads["mean", "mse"],
                             jnp.einsum("bo,bi->boi", (y - y.mean(0)) / 3, x), rtol=1e-12)


def test_references_carry_no_gradient():
  x = jnp.ones((3, 2))
  g = jax.grad(lambda w: jnp.sum(l3d.references(jax.random.PRNGKey(0), x @ w)))(jnp.eye(2))
  np.testing.assert_array_equal(g, 0.0)


# ------------------------------------------------------------------------- the two paths, the loss

def _squares_setup(dtype, batch=32, n_v=5, rank=2):
  mcfg = squares.model_config(width=5)
  params = jax.tree.map(lambda a: a.astype(dtype), squares.init(jax.random.PRNGKey(0), mcfg))
  x = data.sparse_features_nonzero(jax.random.PRNGKey(1), batch, 5, 0.3, 0.0, 1.0,
                                   random_sign=True, dtype=dtype)
  cfg = _cfg(n_subnets=n_v, rank=rank, topk=0.1)
  st = l3d.init(jax.random.PRNGKey(2), params, cfg)
  # a trained-like encoder: different from the decoder
  st = st._replace(enc=jax.tree.map(lambda a, k: a + 0.3 * jax.random.normal(k, a.shape, dtype),
                                    st.enc, _keys_like(st.enc)))
  return squares.apply, params, x, cfg, st


def _keys_like(tree):
  leaves, treedef = jax.tree.flatten(tree)
  return jax.tree.unflatten(treedef, list(jax.random.split(jax.random.PRNGKey(9), len(leaves))))


def test_forward_and_explicit_paths_agree_in_float32():
  apply, params, x, cfg, st = _squares_setup(jnp.float32)
  y0, y_ref = _outputs(apply, params, x, jax.random.PRNGKey(3), cfg)

  def run(path):
    f = lambda s: l3d.loss_from_outputs(s, params, x, y0, y_ref, apply=apply, cfg=cfg, path=path)
    return jax.jit(jax.value_and_grad(f, has_aux=True))(st)

  ((le, me), ge), ((lf, mf), gf) = run("explicit"), run("forward")
  assert le.dtype == jnp.float32 and 0.05 < float(le) < 2
  c_e, c_f = np.asarray(me["coeffs"], np.float64), np.asarray(mf["coeffs"], np.float64)
  assert np.max(np.abs(c_e - c_f)) / np.max(np.abs(c_e)) <= 1e-5
  np.testing.assert_array_equal(me["mask"], mf["mask"])
  assert abs(float(le) - float(lf)) / float(le) <= 1e-5
  a, b = (np.concatenate([np.ravel(v) for v in jax.tree.leaves(g)]) for g in (ge, gf))
  assert np.linalg.norm(a - b) / np.linalg.norm(a) <= 1e-4


def test_paths_agree_for_kl_on_sequences_and_with_chunks():
  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  params = {"emb": jax.random.normal(ks[0], (4, 6)), "out": jax.random.normal(ks[1], (7, 6)),
            "b": jax.random.normal(ks[2], (7,))}

  def apply(p, x):  # x: [B, T] tokens -> [B, T, 7] logits
    return jnp.tanh(p["emb"][x]) @ p["out"].T + p["b"]

  x = jax.random.randint(ks[0], (8, 5), 0, 4)
  cfg = _cfg(divergence="kl", sequence=True, n_subnets=3, rank=2, topk=0.3, chunk_size=4)
  st = l3d.init(ks[1], params, cfg)
  st = st._replace(enc=jax.tree.map(lambda a: 1.3 * a, st.enc))
  lf, mf = l3d.loss(st, params, x, ks[2], apply=apply, cfg=cfg, path="forward")
  le, me = l3d.loss(st, params, x, ks[2], apply=apply, cfg=cfg, path="explicit")
  np.testing.assert_allclose(lf, le, rtol=1e-10)
  np.testing.assert_allclose(mf["active"], me["active"], rtol=1e-12)


# (model, B, n_w, n_v, forward multiply-adds / n_w, the faster path): BENCHMARKS.md's L3D rule
# table (scripts/bench_l3d.py --sections=rule, one pinned core, d55c3a7 + this rule's commit);
# near-ties (TM4 B 32 n_v 5: 0.283 vs 0.275 ms) left out
_MEASURED = [
    ("tm1", 32, 25, 5, 0.8, "explicit"), ("tm1", 1024, 25, 20, 0.8, "explicit"),
    ("tm4", 256, 150, 5, 0.83, "explicit"), ("tm4", 1024, 150, 5, 0.83, "explicit"),
    ("tm4", 1024, 150, 20, 0.83, "explicit"),
    ("tm4w100", 32, 31405, 5, 0.99, "forward"), ("tm4w100", 256, 31405, 20, 0.99, "forward"),
    ("tm4w100", 1024, 31405, 5, 0.99, "forward"),
    ("mlp", 32, 17610, 5, 0.99, "forward"), ("mlp", 32, 17610, 20, 0.99, "explicit"),
    ("mlp", 256, 17610, 5, 0.99, "forward"), ("mlp", 256, 17610, 20, 0.99, "forward"),
    ("cnn", 32, 5794, 20, 8.04, "explicit"), ("cnn", 1024, 5794, 5, 8.04, "explicit"),
    ("attn", 32, 4224, 5, 8.73, "explicit"), ("attn", 1024, 4224, 20, 8.73, "explicit"),
    ("attn2", 256, 4224, 5, 2.0, "explicit"),  # T 2: the least reuse measured
]


@pytest.mark.parametrize("model,b,n_w,n_v,reuse,faster", _MEASURED)
def test_auto_path_picks_the_measured_faster_path(model, b, n_w, n_v, reuse, faster):
  assert l3d.choose_path(_cfg(), b, n_w, n_v, reuse) == faster


def test_auto_path_memory_cap_and_fixed_paths():
  cfg = _cfg()
  assert l3d.choose_path(cfg, 1024, 8192, 5, 9.0) == "explicit"      # at the cap
  assert l3d.choose_path(cfg, 1024, 8193, 5, 9.0) == "forward"       # past it, whatever reuse
  cfg.path = "forward"
  assert l3d.choose_path(cfg, 32, 10, 5, 9.0) == "forward"


def test_forward_macs_count_products_and_convolutions():
  mlp = lambda p, x: jnp.tanh(x @ p["a"]) @ p["b"]             # 3 -> 4 -> 2: 12 + 8
  p = {"a": jnp.ones((3, 4)), "b": jnp.ones((4, 2))}
  assert l3d.forward_macs(mlp, p, jnp.ones((7, 3))) == 20
  conv = lambda p, x: jax.lax.conv_general_dilated(x, p["k"], (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  k = {"k": jnp.ones((3, 3, 2, 5))}                           # 8 x 8 outputs x 5 x (3 3 2)
  assert l3d.forward_macs(conv, k, jnp.ones((4, 8, 8, 2))) == 64 * 5 * 18
  seq = lambda p, x: jax.lax.scan(lambda c, xt: (c, xt @ p["a"]), 0.0, x.swapaxes(0, 1))[1]
  assert l3d.forward_macs(seq, p, jnp.ones((2, 6, 3))) == 6 * 12  # 6 scanned steps
  # a product reused over 8 positions takes the explicit path past the dense threshold
  # (B n_w = 256 x 1056 > 2^16 x 2), where a dense target would go forward
  w = {"w": jax.random.normal(jax.random.PRNGKey(0), (32, 33))}
  x = jax.random.normal(jax.random.PRNGKey(1), (32, 8, 33))
  apply = lambda p, x: x @ p["w"].T
  assert l3d.forward_macs(apply, w, x) / 1056 == 8
  assert l3d.choose_path(_cfg(), 256, 1056, 2, 1.0) == "forward"
  assert l3d.choose_path(_cfg(), 256, 1056, 2, 8.0) == "explicit"


def _parallel(n=4):
  """§6.4 'parallel TMS': n independent scalar models y_i = w_i x_i (W diagonal, decomposed as
  the diagonal vector), single-feature inputs."""
  w = jnp.linspace(0.8, 1.2, n)
  apply = lambda p, x: x * p["w"]
  x = jnp.repeat(jnp.eye(n), 4, axis=0) * jnp.linspace(0.5, 1.0, 4 * n)[:, None]
  return apply, {"w": w}, x


@pytest.mark.parametrize("path", ["explicit", "forward"])
def test_loss_is_zero_at_the_exact_solution_and_one_without_decoder(path):
  apply, params, x = _parallel()
  cfg = _cfg(n_subnets=4, rank=1, topk=0.25)
  one_hot = l3d.Tucker(jnp.ones((4, 1)), (jnp.eye(4)[:, None, :],))
  st = l3d.State({"w": one_hot}, {"w": one_hot})
  y0 = apply(params, x)
  y_ref = jnp.roll(y0, 3, axis=0)  # another sample's output
  val, _ = l3d.loss_from_outputs(st, params, x, y0, y_ref, apply=apply, cfg=cfg, path=path)
  assert abs(float(val)) < 1e-12
  zero = st._replace(dec={"w": l3d.Tucker(jnp.zeros((4, 1)), one_hot.factors)})
  val, _ = l3d.loss_from_outputs(zero, params, x, y0, y_ref, apply=apply, cfg=cfg, path=path)
  np.testing.assert_allclose(val, 1.0, rtol=1e-9)


def test_training_recovers_the_parallel_blocks():
  """§6.4 integration oracle: from random init to loss < 1e-3 and recovery > 0.99."""
  apply, params, x = _parallel()
  # another sample's output as reference: from this init and schedule the zero reference
  # stalls at loss 0.13 (measured)
  cfg = _cfg(n_subnets=4, rank=1, topk=0.25, reference="batch")
  opt = optax.adam(optax.exponential_decay(0.05, 1000, 0.5))
  state = train.init_state(l3d.init(jax.random.PRNGKey(0), params, cfg), opt,
                           jax.random.PRNGKey(1))
  # the whole fixed set every step: a train.Frozen data set (a batch_fn ignoring its key is
  # refused, train.check_batch)
  update = l3d.make_update(apply, cfg, lambda k, data: data, opt)
  state = train.fit(state, train.Frozen(params, x), update, total_steps=3000, workdir=None,
                    log_every=0,
                    steps_per_dispatch=1000)
  for k in range(3):  # whatever the references
    val = l3d.loss(state.params, params, x, jax.random.PRNGKey(k), apply=apply, cfg=cfg)[0]
    assert float(val) < 1e-3
  v = np.abs(np.asarray(l3d.flat(l3d.blocks(state.params.dec))))  # [K, 4], unit rows
  assert np.mean(v.max(axis=0)) > 0.99


# -------------------------------------------------------------------------------- normalisation

def test_decoder_normalisation_variants():
  params = {"a": jnp.ones((3, 4)), "b": jnp.ones(3), "c": jnp.ones((2, 2, 2))}
  st = l3d.init(jax.random.PRNGKey(0), params, _cfg(n_subnets=3, rank=2)).dec
  big = jax.tree.map(lambda a: 3.0 * a, st)
  for kind in ("l2", "reference"):
    # every tensor block of v_k divided by v_k's norm (the reference norm is not homogeneous of
    # degree 1, so its result does not have reference norm 1: the code does the same)
    nz = l3d.normalize_subnets(big, kind)
    norms = l3d.subnet_norms(big, kind)
    for p in params:
      np.testing.assert_allclose(l3d.blocks_of(nz[p]),
                                 l3d.blocks_of(big[p]) / norms.reshape(3, *[1] * params[p].ndim),
                                 rtol=1e-9)
  np.testing.assert_allclose(l3d.subnet_norms(l3d.normalize_subnets(big, "l2")), np.ones(3),
                             rtol=1e-10)
  per = [jnp.linalg.norm(l3d.blocks_of(st[p]).reshape(3, -1), axis=1) for p in params]
  np.testing.assert_allclose(l3d.subnet_norms(st, "reference"), jnp.sqrt(sum(per)), rtol=1e-12)
  # spread equally: every piece of a tensor's Tucker form is scaled by the same factor
  nz = l3d.normalize_subnets(big, "l2")
  s = l3d.subnet_norms(big, "l2") ** (-1 / 3)
  np.testing.assert_allclose(nz["a"].core, big["a"].core * s[:, None, None], rtol=1e-9)


def test_update_on_a_fixed_data_set_draws_from_the_frozen_data():
  """Under `train.Frozen(params, data)` the step calls batch_fn(key, data): the same step as one
  closing over the same data set (same keys, same draws), while the data stays a traced input."""
  apply, params, x = _parallel()
  cfg = _cfg(n_subnets=4, rank=1, topk=0.5)
  opt = optax.adam(1e-2)
  state = train.init_state(l3d.init(jax.random.PRNGKey(0), params, cfg), opt,
                           jax.random.PRNGKey(1))
  draw = lambda k, data: data[jax.random.choice(k, data.shape[0], (8,), replace=False)]
  frozen = jax.jit(l3d.make_update(apply, cfg, draw, opt))
  closed = jax.jit(l3d.make_update(apply, cfg, lambda k: draw(k, x), opt))
  a, ma = frozen(state, train.Frozen(params, x))
  b, mb = closed(state, params)
  for u, v in zip(jax.tree.leaves((a, ma)), jax.tree.leaves((b, mb))):
    np.testing.assert_array_equal(u, v)
  assert isinstance(a.params, l3d.State)
  c, mc = frozen(state, train.Frozen(params, x[::-1]))   # other data, same step: other result
  assert float(jnp.abs(mc["loss"] - ma["loss"])) > 1e-6


def test_state_round_trips_through_a_checkpoint(tmp_path):
  apply, params, x = _parallel()
  cfg = _cfg(n_subnets=4, rank=1, topk=0.5)
  opt = optax.adam(1e-2)
  state = train.init_state(l3d.init(jax.random.PRNGKey(0), params, cfg), opt,
                           jax.random.PRNGKey(1))
  state, _ = l3d.make_update(apply, cfg, lambda k: x, opt)(state, params)
  ck = Checkpointer(str(tmp_path))
  ck.save(1, state)
  ck.wait()
  back = ck.restore(train.init_state(l3d.init(jax.random.PRNGKey(3), params, cfg), opt,
                                     jax.random.PRNGKey(1)), 1)
  ck.close()
  assert isinstance(back.params, l3d.State) and isinstance(back.opt_state[0].mu, l3d.State)
  assert jax.tree.structure(back) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_update_normalises_the_decoder_but_not_the_encoder():
  apply, params, x = _parallel()
  cfg = _cfg(n_subnets=4, rank=1, topk=0.5)
  opt = optax.sgd(0.5)
  state = train.init_state(l3d.init(jax.random.PRNGKey(0), params, cfg), opt,
                           jax.random.PRNGKey(1))
  update = l3d.make_update(apply, cfg, lambda k, data: data, opt)  # the whole fixed set
  state, _ = jax.jit(update)(state, train.Frozen(params, x))
  np.testing.assert_allclose(l3d.subnet_norms(state.params.dec), np.ones(4), rtol=1e-6)
  assert np.max(np.abs(np.asarray(l3d.subnet_norms(state.params.enc)) - 1)) > 1e-3


# ---------------------------------------------------------------------------------- measurements

def test_impact_is_the_mean_absolute_coefficient_over_references():
  apply, params, x, cfg, st = _squares_setup(jnp.float64, batch=6)
  key = jax.random.PRNGKey(5)
  got = ms.impact(apply, params, st.enc, x, key, cfg, n_refs=3)
  y0 = apply(params, x)
  want = 0
  for k in jax.random.split(key, 3):
    y_ref = l3d.references(k, y0, cfg.reference)
    want = want + jnp.abs(l3d.coefficients(apply, params, st.enc, x, y0, y_ref, cfg,
                                           path="explicit")) / 3
  np.testing.assert_allclose(got, want, rtol=1e-9)
  top = ms.top_samples(got, 2)
  np.testing.assert_array_equal(top[:, 0], np.argmax(got, axis=0))


def test_interventions_on_a_linear_model_are_linear():
  w = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
  params = {"W": w}
  dec = l3d.init(jax.random.PRNGKey(1), params, _cfg(n_subnets=2, rank=2)).dec
  v = l3d.blocks(dec)["W"]
  x = jax.random.normal(jax.random.PRNGKey(2), (5, 4))
  deltas = jnp.array([-1.0, 0.5, 2.0])
  got = ms.perturb(_linear, params, dec, x, deltas)
  want = _linear(params, x)[None, None] + deltas[:, None, None, None] * jnp.einsum(
      "kij,bj->kbi", v, x)[None]
  np.testing.assert_allclose(got, want, rtol=1e-12)
  pair = ms.perturb_pair(_linear, params, dec, x, 0, 1, deltas, deltas[:2])
  np.testing.assert_allclose(pair[:, 0], got[:, 0] + deltas[0] * (x @ v[1].T), rtol=1e-12)
  d = ms.output_derivatives(_linear, params, dec, x)
  np.testing.assert_allclose(d, jnp.einsum("kij,bj->kbi", v, x), rtol=1e-12)
  top = ms.most_affected_outputs(_linear, params, dec, x, top=1)
  np.testing.assert_array_equal(top[..., 0], jnp.argmax(jnp.abs(d), axis=-1))


def test_hidden_only_perturbation_leaves_other_tensors_and_specificity():
  params = _tm1(jax.random.PRNGKey(0))
  dec = l3d.init(jax.random.PRNGKey(1), params, _cfg(n_subnets=2)).dec
  x = jax.random.uniform(jax.random.PRNGKey(2), (4, 5))
  only_b = ms.perturb(tms.apply_untied, params, dec, x, jnp.array([1.0]), paths=["b"])
  vb = l3d.blocks(dec)["b"]
  want = jax.vmap(lambda b: tms.apply_untied({**params, "b": params["b"] + b}, x))(vb)
  np.testing.assert_allclose(only_b[0], want, rtol=1e-12)
  with pytest.raises(ValueError, match="not decomposed"):
    ms.perturb(tms.apply_untied, params, dec, x, jnp.array([1.0]), paths=["W"])
  change = jnp.array([[4.0, 4.0, 1.0, 1.0]])
  uses = jnp.array([[True], [True], [False], [False]])
  np.testing.assert_allclose(ms.specificity(change, uses), [4.0])


def test_feature_directions_and_private_share_on_parallel_models():
  """Parallel scalar models: feature j's gradients live on w_j alone, so its best direction is
  the one-hot e_j, all of its energy is private and moving along it leaves the other samples'
  outputs unchanged. A shared output bias c makes part of every feature's energy public."""
  apply, params, x = _parallel()
  cfg = _cfg(n_subnets=4, rank=1)
  like = {"w": jnp.zeros((4, 4))}
  g, xg = ms.stacked_gradients(apply, params, ["w"], x, jax.random.PRNGKey(0), cfg, 8)
  fd = ms.feature_directions(g, xg, like)
  np.testing.assert_allclose(np.abs(l3d.blocks(fd)["w"]), np.eye(4), atol=1e-12)
  np.testing.assert_allclose(ms.private_share(g, xg), 1.0, rtol=1e-7)  # 1e-10 in the denominator
  change = ms.output_change(apply, params, fd, x, 0.5)
  assert float(jnp.max(change * (x == 0).T)) == 0.0 and float(jnp.min(ms.specificity(
      change, x != 0))) > 1e6
  biased = lambda p, x: x * p["w"] + p["c"]
  pc = {"w": params["w"], "c": jnp.array([0.3])}
  g, xg = ms.stacked_gradients(biased, pc, ["w", "c"], x, jax.random.PRNGKey(1), cfg, 8)
  share = ms.private_share(g, xg)
  for j in range(4):
    on = np.asarray(xg[:, j] != 0)
    gj = np.asarray(g)[on]
    want = np.sum(gj[:, 1 + j] ** 2) / np.sum(gj**2)  # columns in sorted path order: c, w
    np.testing.assert_allclose(share[j], want, rtol=1e-7)
    assert 0 < want < 1
  fd = ms.feature_directions(g, xg, {"w": jnp.zeros((4, 4)), "c": jnp.zeros((4, 1))})
  assert np.all(np.abs(np.asarray(l3d.blocks(fd)["c"])) > 0.01)  # public part: moves everyone
  assert float(jnp.max(ms.specificity(ms.output_change(biased, pc, fd, x, 0.5), x != 0))) < 1e3


# ------------------------------------------------------------------------------- errors and data

def test_bad_config_and_shapes_fail_clearly():
  with pytest.raises(ConfigError, match="'topk'"):
    l3d.validate(_cfg(topk=1.5))
  with pytest.raises(ConfigError, match="unknown config field 'rnak'"):
    c = _cfg()
    c.rnak = 2
    l3d.validate(c)
  with pytest.raises(ConfigError, match="'path'"):
    l3d.validate(_cfg(path="fast"))
  params = _tm1(jax.random.PRNGKey(0))
  st = l3d.init(jax.random.PRNGKey(1), params, _cfg())
  wrong = {"W_in": params["W_in"].T, "W_out": params["W_out"], "b": params["b"]}
  x = jnp.ones((4, 5))
  with pytest.raises(ValueError, match="block shape"):
    l3d.loss(st, wrong, x, jax.random.PRNGKey(0), apply=tms.apply_untied, cfg=_cfg())
  with pytest.raises(ValueError, match="decompose different tensors"):
    l3d.check_subnets(params, st._replace(enc={"b": st.enc["b"]}))
  with pytest.raises(ValueError, match="floor"):  # 0.1 of 1 x 5 coefficients keeps none
    l3d.loss(st, params, x[:1], jax.random.PRNGKey(0), apply=tms.apply_untied, cfg=_cfg())


def test_l3d_data_generator():
  x = data.sparse_features_nonzero(jax.random.PRNGKey(0), 20_000, 10, 0.05, group_size=5,
                                   random_sign=True)
  active = np.asarray(x != 0)
  assert active.any(axis=1).all()
  groups = active.reshape(-1, 2, 5)
  assert np.all(groups.all(-1) == groups.any(-1))  # groups are co-active
  assert 0.4 < np.mean(x[active] > 0) < 0.6 and np.abs(x).max() <= 1
  # conditional rate of group 1 given 'not all zero': p / (1 - (1-p)^2)
  rate = groups[:, 1].any(-1).mean()
  want = 0.05 / (1 - 0.95**2)
  assert abs(rate - want) < 4 * np.sqrt(want * (1 - want) / 20_000)


def test_circuit_target_trains_on_labels_from_its_frozen_task(tmp_path):
  c = training.default_config()
  c.model = circuits.model_config(6, 3)
  c.data.update(dict(reject_zero=True, batch_size=32))
  c.optim.steps, c.run.log_every, c.run.steps_per_dispatch = 100, 0, 100
  p = training.train_target(c, str(tmp_path))
  _, tcfg, loaded = training.load_target(str(tmp_path))
  np.testing.assert_array_equal(loaded["A"], circuits.init(jax.random.PRNGKey(0), c.model)["A"])
  x = training.batch(jax.random.PRNGKey(0), tcfg, 8)
  assert (x != 0).any(axis=1).all()
  np.testing.assert_allclose(circuits.apply(loaded, x), circuits.apply(p, x), rtol=1e-6)
  np.testing.assert_array_equal(registry.get("circuits").label(loaded, x), x @ loaded["A"])


def test_squares_model_variants_and_report():
  cfg = squares.model_config(width=3, activation="elu", output_activation=True)
  params = squares.init(jax.random.PRNGKey(0), cfg)
  x = jnp.linspace(-1, 1, 10).reshape(2, 5)
  apply = registry.of(cfg).make_apply(cfg)
  h = x
  for i in range(5):
    h = jax.nn.elu(h @ params["layers"][str(i)]["w"].T + params["layers"][str(i)]["b"])
  np.testing.assert_allclose(apply(params, x), h, rtol=1e-12)
  exact = lambda p, x: x**2   # a perfect target has error 0 on every feature
  assert squares.report(exact, params)["features_learned"] == 5


def test_decompose_l3d_runner_writes_summary_and_figures(tmp_path):
  from paramdecomp.runs import decompose_l3d as dec
  c = training.default_config()
  c.data.update(dict(reject_zero=True, batch_size=32))
  c.optim.steps, c.run.log_every, c.run.steps_per_dispatch = 100, 0, 100
  training.train_target(c, str(tmp_path / "t"))
  d = dec.default_config()
  d.target_dir = str(tmp_path / "t")
  d.epochs, d.n_samples, d.n_eval, d.warm_start_epochs = 2, 64, 64, 1
  d.target_view = "untied"  # TM1's encoder and decoder as separate tensors
  d.run.update(dict(log_every=1, checkpoint_every=1))
  s = dec.decompose(d, str(tmp_path / "d"))
  assert 0 < s["recon_train"] < 2 and len(s["p_act"]) == 5
  # each epoch logs its P_act per subnetwork, summing to the mean number of coefficients kept per
  # sample: the warm start (k = 0.999) keeps floor(0.999 x 32 x 5) = 159 of each batch's 160
  # (the zero reference leaves no tied zero coefficients), two batches of 32 per epoch
  with open(tmp_path / "d" / "metrics.jsonl") as f:
    warm, top = [json.loads(line) for line in f]
  assert [warm["step"], top["step"]] == [2, 4]
  np.testing.assert_allclose([warm["active"], sum(warm["p_act"])], [318 / 64] * 2, rtol=1e-6)
  assert min(warm["p_act"]) >= 1 - 2 / 64
  # then top-k 0.1 keeps floor(0.1 x 32 x 5) = 16 of each batch's coefficients: 0.5 per sample
  np.testing.assert_allclose([top["active"], sum(top["p_act"])], [0.5, 0.5], rtol=1e-6)
  # same held-out samples and references: no n_v directions do better than the bound
  assert 0 < s["recon_bound_heldout"] <= s["recon_heldout_pooled"] + 1e-6
  assert len(s["tms"]["match"]) == 5 and len(s["specificity"]) == 5
  for f in s["figures"]:
    assert os.path.getsize(f) > 1000
  with pytest.raises(FileExistsError):
    dec.decompose(d, str(tmp_path / "d"))


def test_reconstruction_bound_is_the_loss_of_the_best_unconstrained_subnetworks():
  """The bound for r equals the loss of encoder = decoder = G's top-r right singular vectors with
  every coefficient kept (one batch, so pooling agrees), and no state does better."""
  apply = lambda p, x: jnp.tanh(x * p["w"] + p["b"])
  params = {"w": jnp.linspace(0.5, 1.5, 4), "b": jnp.linspace(-0.2, 0.3, 4)}
  x = jax.random.uniform(jax.random.PRNGKey(0), (32, 4))
  cfg, key = _cfg(n_subnets=3, rank=1, topk=1.0), jax.random.PRNGKey(1)
  b0, b3, b8 = ms.reconstruction_bound(apply, params, ["w", "b"], x, key, cfg, 32, (0, 3, 8))
  assert abs(b0 - 1) < 1e-9 and b8 < 1e-9 and 1e-3 < b3 < 1
  y0 = apply(params, x)
  y_ref = l3d.references(jax.random.split(key, 1)[0], y0)
  g = l3d.flat_batch(l3d.gradients(apply, params, x, y0, y_ref, ["w", "b"], cfg))
  v = jnp.linalg.svd(g, full_matrices=False)[2][:3]                # [3, n_w] in path order w, b
  tucker = lambda m: l3d.Tucker(jnp.ones((3, 1)), (m[:, None, :],))
  best = {"w": tucker(v[:, :4]), "b": tucker(v[:, 4:])}
  val, _ = l3d.loss_from_outputs(l3d.State(best, best), params, x, y0, y_ref, apply=apply,
                                 cfg=cfg, path="explicit")
  np.testing.assert_allclose(val, b3, rtol=1e-6)
  rnd = l3d.init(jax.random.PRNGKey(2), params, cfg)
  val, _ = l3d.loss_from_outputs(rnd, params, x, y0, y_ref, apply=apply, cfg=cfg)
  assert float(val) > b3


def test_decomposition_data_zero_rows_option():
  from paramdecomp.runs import decompose_l3d as dec
  d = dec.default_config()
  t1 = training.default_config()
  t1.model = tms.model_config(5, 2)
  t1.data.update(dict(p=0.05, reject_zero=True))
  for mode, frac in (("target", (0.0, 0.0)), ("reject", (0.0, 0.0)), ("keep", (0.70, 0.84))):
    d.zero_rows = mode
    x = training.batch(jax.random.PRNGKey(0), dec.data_config(d, t1), 2000)
    zero = float(np.mean(np.all(np.asarray(x) == 0, axis=1)))  # keep: 0.95^5 = 0.774
    assert frac[0] <= zero <= frac[1], (mode, zero)
  assert t1.data.reject_zero  # the target's config is left alone
  # co-active groups with random signs (TM3/TM4 style): groups kept whole, zero rows 0.95^2
  t1.data.update(dict(group_size=5, random_sign=True))
  t1.model = tms.model_config(10, 2)
  x = np.asarray(training.batch(jax.random.PRNGKey(1), dec.data_config(d, t1), 4000))
  act = (x != 0).reshape(-1, 2, 5)
  assert np.all(act.all(-1) == act.any(-1)) and 0.4 < np.mean(x[x != 0] > 0) < 0.6
  zero = np.mean(~act.any(axis=(1, 2)))
  assert abs(zero - 0.95**2) < 4 * np.sqrt(0.1 / 4000), zero
  d.zero_rows = "never"
  with pytest.raises(ConfigError, match="zero_rows"):
    dec.validate(d)


def _dense(blocks_):
  """Tucker maps whose blocks are the given dense ones [n_v, *shape] (identity factors)."""
  def one(b):
    eyes = tuple(jnp.broadcast_to(jnp.eye(d), (b.shape[0], d, d)) for d in b.shape[1:])
    return l3d.Tucker(b, eyes)
  return {p: one(b) for p, b in blocks_.items()}


def test_tm1_feature_cosines_of_planted_support_subnetworks():
  """Subnetwork k is exactly feature perm[k]'s support {W_in[:, i], W_out[i, :], b_i} (the
  encoder -2 times it): each feature is matched to its subnetwork with all of its norm there and
  |cos| 1 on both maps."""
  from paramdecomp.runs import l3d_summary
  params = _tm1(jax.random.PRNGKey(0))
  perm = np.array([3, 0, 4, 1, 2])
  on = jax.nn.one_hot(perm, 5)                                       # [K, n]: feature of k
  dec = _dense({"W_in": params["W_in"][None] * on[:, None, :],
                "W_out": params["W_out"][None] * on[:, :, None], "b": params["b"] * on})
  enc = {p: t._replace(core=-2.0 * t.core) for p, t in dec.items()}
  got = l3d_summary.tms_feature_cosines(params, l3d.State(enc, dec))
  assert got["match"] == list(np.argsort(perm)) and got["distinct_matches"] == 5
  np.testing.assert_allclose(got["support"] + got["cos_dec"] + got["cos_enc"], 1.0, rtol=1e-4)


def test_group_assignment_of_planted_subnetworks():
  """Groups of 3 inputs: subnetwork 0 all on group 1, 1 all on group 0, 2 dead, 3 with 0.64 of
  its W_in mass on group 1; with 3 live the groups are not one each, with 3 dead they are."""
  from paramdecomp.runs import l3d_summary
  w = np.zeros((4, 2, 6))
  w[0, 0, 3:] = 1.0
  w[1, 1, :3] = 2.0
  w[2] = 5.0
  w[3, 0, :3], w[3, 0, 3:] = 0.6, 0.8                              # mass 0.36 x 3 vs 0.64 x 3
  state = l3d.State({}, _dense({"W_in": jnp.asarray(w)}))
  got = l3d_summary.group_assignment(state, np.array([0.2, 0.3, 0.0, 0.1]), 3)
  assert got["live"] == [0, 1, 3] and got["group_of_live"] == [1, 0, 1]
  np.testing.assert_allclose(got["group_share"], [1.0, 1.0, 0.64], rtol=1e-4)
  assert not got["one_live_per_group"]
  assert l3d_summary.group_assignment(state, np.array([0.2, 0.3, 0.0, 0.0]), 3)[
      "one_live_per_group"]
