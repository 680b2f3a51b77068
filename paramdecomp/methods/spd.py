"""SPD: stochastic parameter decomposition (docs/methods/spd.md; METHODS.md §2).

Each decomposed weight (the leaves `cfg.decompose` selects, in their matrix view as for APD) is
a sum of C rank-one subcomponents u_c v_c^T (`lowrank.Factors` with m = 1). A *site* is one
product the model makes with a decomposed weight: a weight used once is one site named by its
path; a weight used k times (the tied TMS, whose decoder is ``h @ W``) gives sites 'path:0' ..
'path:k-1', which share the subcomponents (the decoder's are the transposes of the encoder's)
but have their own causal-importance functions and masks. With ``tied_updates='per_use'`` (the
default; 'shared' keeps one parameter with one update of the summed gradient) such a
weight's entry in the state is a tuple of k equal copies, one per site: each copy gets its own
site's gradient and its own optimiser moments, and every copy moves by the sum of the k updates
(the reference's tie: k Parameters on one storage, each updated by AdamW in turn).

One step: the target's forward pass records every site's input a; the inner activations
h_c = v_c . a (v: the input side of the site's product) feed the CI functions (`spd_ci`);
g = lower sigmoid (masks), g_up = upper sigmoid (importance loss); masks m = g + (1 - g) r with
r from a mask source (`spd_masks`); the masked forward passes run through
`paramdecomp.core.factored` with per-site, per-position scales (`factored.PerUse`), so no
per-sample dense weight is ever formed. Losses (each with its coefficient): faithfulness,
stochastic reconstruction (every site masked), layerwise stochastic reconstruction (one site at
a time, the rest at the target's weights), importance minimality (p, optionally annealed), and
the extras: deterministic (m = g) and layerwise deterministic reconstruction, the all-ones
output reconstruction, the CI-weighted Schatten penalty and, for language models, the
embedding reconstruction (the masked embedding table's rows against the target's).

Method surface: default_config, validate, init, loss, make_update, normalize, COMPONENT_TYPES.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from paramdecomp.core import config as cfglib
from paramdecomp.core import lowrank, pytree, train
from paramdecomp.core.factored import PerUse, apply_factored, trace_matmuls
from paramdecomp.core.inputs import check_batched
from paramdecomp.core.lowrank import Factors, LowRank
from paramdecomp.methods import spd_ci, spd_masks


class State(NamedTuple):
  """SPD's trainable state: ``sub[path]`` the C rank-one subcomponents of a decomposed weight
  (U [C, a, 1], V [C, b, 1] in its matrix view [a, b]; with per-use tied updates, a tuple of
  equal copies, one per site of that weight); ``ci[site]`` the CI functions."""
  sub: dict
  ci: dict


COMPONENT_TYPES = (Factors,) + spd_ci.COMPONENT_TYPES
DIVERGENCES = ("mse", "kl")
TIED_UPDATES = ("shared", "per_use")


class Site(NamedTuple):
  """One product of a decomposed weight: its name, weight path, index among that weight's
  products, the contracted view axis (0: ``a @ Wv``, 1: ``Wv @ a``), input size, lookup?"""
  name: str
  path: str
  use: int
  axis: int
  d_in: int
  lookup: bool


def default_config() -> ml_collections.ConfigDict:
  """SPD hyperparameters; the TMS 5-2 values of the paper (§2.7) as defaults."""
  return ml_collections.ConfigDict(dict(
      decompose=("W",),               # path patterns of the weights to decompose
      C=20,                           # rank-one subcomponents per weight
      ci_fn="mlp",                    # mlp (per subcomponent) | vector_mlp | shared_mlp
      d_gate=16,                      # hidden units of the CI MLPs (0: affine)
      gelu="exact",                   # exact (the reference) | tanh (approximation, faster)
      sigmoid="paper",                # paper: piecewise derivative | head: the later library's
                                      # clipped lower sigmoid with its custom gradient
      leaky_alpha=0.01,
      mask_source="uniform",          # uniform (paper) | binomial
      n_mask_samples=1,               # S
      divergence="mse",               # mse (toys) | kl (logits: summed over the last axis)
      chunk_size=0,                   # samples per chunk of the masked passes (0: all at once)
      faithfulness_coeff=1.0,
      stochastic_recon_coeff=1.0,
      stochastic_recon_layerwise_coeff=1.0,
      importance_minimality_coeff=3e-3,
      pnorm=1.0,
      pnorm_final=0.0,                # > 0: anneal p linearly to this (library extension)
      anneal_start_frac=0.0,          # ... between these fractions of anneal_steps
      anneal_end_frac=1.0,
      anneal_steps=0,                 # the run's length (the runner sets it)
      importance_eps=0.0,             # (g_up + eps)^p; the later library uses 1e-12
      recon_coeff=0.0,                # deterministic reconstruction, m = g
      recon_layerwise_coeff=0.0,
      out_recon_coeff=0.0,            # all subcomponents unmasked (m = 1)
      schatten_coeff=0.0,             # E sum g_up^p (|u_c|^2 + |v_c|^2)
      embedding_recon_coeff=0.0,      # stochastically masked embedding rows vs the target's
      tied_updates="per_use",         # a weight used at several sites (tied TMS): per_use
                                      # (the reference, step for step: one copy and optimiser
                                      # state per site, the shared values moved by the sum of
                                      # their updates; results/spd_tms.md)
                                      # | shared (one parameter, one update of the summed grad)
  ))


_COEFFS = ("faithfulness_coeff", "stochastic_recon_coeff", "stochastic_recon_layerwise_coeff",
           "importance_minimality_coeff", "recon_coeff", "recon_layerwise_coeff",
           "out_recon_coeff", "schatten_coeff", "embedding_recon_coeff", "importance_eps",
           "pnorm_final")


def validate(cfg: ml_collections.ConfigDict) -> None:
  cfglib.check_fields(cfg, default_config())
  cfglib.require(len(cfg.decompose) > 0, "decompose", "names no weights")
  cfglib.one_of(cfg, "ci_fn", spd_ci.CI_FNS)
  cfglib.one_of(cfg, "sigmoid", spd_ci.SIGMOIDS)
  cfglib.one_of(cfg, "gelu", spd_ci.GELUS)
  cfglib.one_of(cfg, "mask_source", tuple(spd_masks.SOURCES))
  cfglib.one_of(cfg, "divergence", DIVERGENCES)
  cfglib.one_of(cfg, "tied_updates", TIED_UPDATES)
  cfglib.positive(cfg, "C", "n_mask_samples", "pnorm", "leaky_alpha")
  cfglib.require(isinstance(cfg.C, int), "C", f"must be an integer, got {cfg.C!r}")
  cfglib.require(cfg.d_gate >= 0, "d_gate", f"must be >= 0 (0: affine gates), got {cfg.d_gate}")
  cfglib.require(cfg.chunk_size >= 0, "chunk_size", f"must be >= 0, got {cfg.chunk_size}")
  for f in _COEFFS:
    cfglib.require(cfg[f] >= 0, f, f"must be >= 0, got {cfg[f]}")
  if cfg.pnorm_final:
    cfglib.require(cfg.anneal_steps > 0, "anneal_steps",
                   "p-annealing (pnorm_final > 0) needs the run's length")
    cfglib.require(0 <= cfg.anneal_start_frac <= cfg.anneal_end_frac <= 1, "anneal_start_frac",
                   "needs 0 <= anneal_start_frac <= anneal_end_frac <= 1")


# ---- sites and subcomponents -----------------------------------------------------------------

def sites(apply: Callable, params, x, paths) -> tuple[Site, ...]:
  """The products of the weights at `paths` in ``apply(params, x)`` (traced abstractly; x may be
  a ShapeDtypeStruct), in the order the model runs them per weight, weights in `paths` order."""
  found = {}

  def run(params, x):
    out, uses = trace_matmuls(apply, params, {}, x, list(paths))
    for p, us in uses.items():
      found[p] = [(u.axis, u.view[u.axis], u.ids is not None) for u in us]
    return out

  jax.eval_shape(run, params, x)
  out = []
  for p in paths:
    if not found.get(p):
      raise ValueError(f"{p!r} takes part in no product of the model: nothing to decompose it "
                       "by; check cfg.decompose")
    for i, (axis, d, lookup) in enumerate(found[p]):
      name = p if len(found[p]) == 1 else f"{p}:{i}"
      out.append(Site(name, p, i, axis, d, lookup))
  return tuple(out)


def _view(apply, params, x, path) -> tuple[int, int]:
  def run(params, x):
    out, uses = trace_matmuls(apply, params, {}, x, [path])
    views.append(uses[path][0].view)
    return out
  views = []
  jax.eval_shape(run, params, x)
  return tuple(views[0])


def init_subcomponents(key, w: jax.Array, view, C: int, out_side: int) -> Factors:
  """The reference init: u_c, v_c ~ N(0, 1) normalised to unit norm, then the output side
  (`out_side`: 0 the view's a axis, 1 its b axis) scaled by <u_c v_c^T, W> so that each rank-one
  piece is the projection of W onto its unit direction."""
  a, b = view
  ku, kv = jax.random.split(key)
  u = jax.random.normal(ku, (C, a), w.dtype)
  v = jax.random.normal(kv, (C, b), w.dtype)
  u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
  v = v / jnp.linalg.norm(v, axis=1, keepdims=True)
  overlap = jnp.einsum("ca,ab,cb->c", u, w.reshape(view), v)
  if out_side == 0:
    u = u * overlap[:, None]
  else:
    v = v * overlap[:, None]
  return Factors(u[..., None], v[..., None])


def init(key, params, cfg, *, apply: Callable | None = None, x=None) -> State:
  """Subcomponents for every decomposed weight and CI functions for every site. Needs the
  model (`apply` and a batch x or its ShapeDtypeStruct) to find the sites. Checks cfg."""
  validate(cfg)
  if apply is None or x is None:
    raise ValueError("spd.init needs apply= and x= (a batch or its ShapeDtypeStruct): the sites "
                     "are the products the model makes with each decomposed weight")
  paths = pytree.select(params, cfg.decompose)
  ss = sites(apply, params, x, paths)
  ws = pytree.get(params, paths)
  sub = {}
  for i, p in enumerate(paths):
    first = next(s for s in ss if s.path == p)
    # the output side of the first product: b for ``a @ Wv`` (axis 0), a for ``Wv @ a``
    sub[p] = init_subcomponents(jax.random.fold_in(key, i), ws[p], _view(apply, params, x, p),
                                cfg.C, 1 - first.axis)
    n_uses = sum(s.path == p for s in ss)
    if cfg.tied_updates == "per_use" and n_uses > 1:
      sub[p] = (sub[p],) * n_uses
  dtype = jax.tree.leaves(ws)[0].dtype
  ci = spd_ci.init_ci(jax.random.fold_in(key, len(paths)), cfg.ci_fn,
                      [(s.name, s.d_in) for s in ss], cfg.C, cfg.d_gate, dtype)
  return State(sub, ci)


def normalize(state: State, cfg) -> State:
  """SPD has no constraint on its parameters: the identity."""
  del cfg
  return state


def _copies(f) -> bool:
  """Is this entry of State.sub a per-use tuple of copies (not one Factors, itself a tuple)?"""
  return isinstance(f, tuple) and not isinstance(f, Factors)


def shared(sub: dict) -> dict:
  """{path: Factors}: `sub` with each per-use tuple of copies (all equal) replaced by its first."""
  return {p: f[0] if _copies(f) else f for p, f in sub.items()}


def _site_factors(state: State, site: Site) -> Factors:
  """The subcomponents the site's product uses: its own copy under per-use tied updates."""
  f = state.sub[site.path]
  return f[site.use] if _copies(f) else f


def subcomponents(state: State) -> dict:
  """{path: [C, a, b]} the rank-one matrices u_c v_c^T in each weight's matrix view."""
  return {p: lowrank.components(f) for p, f in shared(state.sub).items()}


def subcomponent_norms(state: State) -> dict:
  """{path: [C]} Frobenius norms |u_c| |v_c| of the rank-one matrices."""
  return {p: jnp.linalg.norm(f.U[..., 0], axis=1) * jnp.linalg.norm(f.V[..., 0], axis=1)
          for p, f in shared(state.sub).items()}


def faithfulness(params, sub: dict) -> jax.Array:
  """sum_l |W*_l - sum_c u_c v_c^T|^2 / N over the decomposed weights (N: their entries); a
  per-use tuple counts each copy as a weight of its own (the reference's tied components)."""
  ws = pytree.get(params, list(sub))
  sq, n = 0.0, 0
  for p, fs in sub.items():
    for f in fs if _copies(fs) else (fs,):
      sq = sq + jnp.sum((ws[p] - lowrank.total(f).reshape(ws[p].shape)) ** 2)
      n += ws[p].size
  return sq / n


# ---- forward passes --------------------------------------------------------------------------

def _sides(f: Factors, site: Site):
  """(input side [C, k], output side [C, n]) of the subcomponents in the site's product."""
  u, v = f.U[..., 0], f.V[..., 0]
  return (u, v) if site.axis == 0 else (v, u)


def inner_acts(use, f: Factors, site: Site) -> jax.Array:
  """[*pos, C] h_c = v_c . a of the site's input a (a lookup: the picked entries of v_c)."""
  first, _ = _sides(f, site)
  if use.ids is not None:
    return jnp.take(first.T, use.ids, axis=0, mode="fill", fill_value=0)
  return use.act @ first.T


def target_pass(apply, params, state: State, x, ss):
  """(target output, {site: its input [*pos, d_in] or None for a lookup}, {site: h [*pos, C]},
  {lookup site: its ids [*pos]})."""
  y, uses = trace_matmuls(apply, params, {}, x, list(state.sub))
  acts = {s.name: uses[s.path][s.use].act for s in ss}
  inner = {s.name: inner_acts(uses[s.path][s.use], _site_factors(state, s), s) for s in ss}
  ids = {s.name: uses[s.path][s.use].ids for s in ss if s.lookup}
  return y, acts, inner, ids


def embedding_recon(params, state: State, ss, ids: dict, masks: dict) -> jax.Array:
  """Summed over the lookup sites (embeddings): the mean over positions of
  |sum_c m_c(pos) u_c v_c[id] - W*[id]|^2 (the squared error summed over the embedding width),
  the masked table's row for each looked-up id against the target's (the reference's
  `embedding_recon` without its optional unembedding). ids {site: [*pos]}, masks {site:
  [*pos, C]}."""
  if not ids:
    raise ValueError("embedding_recon_coeff > 0 needs a decomposed embedding (a weight the "
                     f"model looks rows up in); the decomposed sites are {[s.name for s in ss]}")
  ws = pytree.get(params, list(state.sub))
  total = 0.0
  for s in (s for s in ss if s.lookup):
    f = _site_factors(state, s)
    first, second = _sides(f, s)
    view = ws[s.path].reshape(f.U.shape[1], f.V.shape[1])
    table = view if s.axis == 0 else view.T                      # [looked-up axis, width]
    i = ids[s.name]
    h = jnp.take(first.T, i, axis=0, mode="fill", fill_value=0)  # [*pos, C]
    row = jnp.take(table, i, axis=0, mode="fill", fill_value=0)  # [*pos, width]
    total = total + jnp.mean(jnp.sum(((masks[s.name] * h) @ second - row) ** 2, axis=-1))
  return total


def masked_apply(apply: Callable, params, state: State, x, masks: dict, ss) -> jax.Array:
  """The model's output with the weight of each site in `masks` replaced by
  sum_c m_c(pos) u_c v_c^T at every position (masks {site: [*pos, C]}, the site's positions);
  sites not in `masks` keep the target's weight."""
  factors = {}
  for p in state.sub:
    lrs = []
    for s in (s for s in ss if s.path == p):
      m, f = masks.get(s.name), _site_factors(state, s)
      lrs.append(None if m is None else LowRank(f.U[..., 0].T, f.V[..., 0].T, m))
    if any(l is not None for l in lrs):
      factors[p] = PerUse(tuple(lrs))
  return apply_factored(apply, params, factors, x)


def divergence(y: jax.Array, y_star: jax.Array, kind: str = "mse") -> jax.Array:
  """'mse': mean of (y - y*)^2 over every entry; 'kl': KL(softmax(y*) || softmax(y)) summed over
  the last axis (the vocabulary), averaged over the rest (batch, positions)."""
  if y.shape != y_star.shape:
    raise ValueError(f"outputs {y.shape} and target outputs {y_star.shape} differ in shape")
  if kind == "mse":
    return jnp.mean((y - y_star) ** 2)
  log_t, log_y = jax.nn.log_softmax(y_star, axis=-1), jax.nn.log_softmax(y, axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(log_t) * (log_t - log_y), axis=-1))


def _recon(apply, params, state, x, y_star, masks: dict, ss, cfg) -> jax.Array:
  """divergence(masked output, target output), over chunks of cfg.chunk_size samples when set
  (each chunk's target output recomputed inside, under remat: memory per chunk)."""
  B = jax.tree.leaves(x)[0].shape[0]
  n = cfg.chunk_size
  if not n or n >= B:
    return divergence(masked_apply(apply, params, state, x, masks, ss), y_star, cfg.divergence)
  if B % n:
    raise ValueError(f"chunk_size={n} does not divide the batch of {B}")
  for s, m in masks.items():
    if m.shape[0] != B:
      raise ValueError(f"chunking splits the batch axis, but site {s!r} has positions "
                       f"{m.shape[:-1]} that do not lead with the batch ({B})")
  split = lambda a: a.reshape((B // n, n) + a.shape[1:])

  @jax.checkpoint
  def one(args):
    xc, mc = args
    yc = jax.lax.stop_gradient(apply(params, xc))
    return divergence(masked_apply(apply, params, state, xc, mc, ss), yc, cfg.divergence)

  return jnp.mean(jax.lax.map(one, (jax.tree.map(split, x), jax.tree.map(split, masks))))


def pnorm_at(step, cfg) -> jax.Array:
  """p of the importance loss at `step`: cfg.pnorm, or linearly annealed to cfg.pnorm_final
  between anneal_start_frac and anneal_end_frac of anneal_steps (constant outside)."""
  if not cfg.pnorm_final or step is None:
    return jnp.asarray(cfg.pnorm, jnp.float32)
  t0, t1 = cfg.anneal_start_frac * cfg.anneal_steps, cfg.anneal_end_frac * cfg.anneal_steps
  frac = jnp.clip((jnp.asarray(step, jnp.float32) - t0) / max(t1 - t0, 1e-9), 0.0, 1.0)
  return cfg.pnorm + frac * (cfg.pnorm_final - cfg.pnorm)


def _power(g: jax.Array, p, eps: float = 0.0) -> jax.Array:
  """(g + eps)^p for g >= 0, with gradient 0 (not 0 * inf = NaN for p < 1) where g = 0."""
  pos = g > 0
  return jnp.where(pos, (jnp.where(pos, g, 1.0) + eps) ** p, jnp.asarray(eps, g.dtype) ** p)


def importance_minimality(g_up: dict, p, eps: float = 0.0) -> jax.Array:
  """sum over sites and subcomponents of (g_up + eps)^p, averaged over positions."""
  return sum(jnp.mean(jnp.sum(_power(g, p, eps), axis=-1)) for g in g_up.values())


def causal_importances(apply: Callable, params, state: State, x, cfg, with_upper=False):
  """{site: g [*pos, C]} (and {site: g_up} with `with_upper`) on the batch x."""
  ss = sites(apply, params, x, list(state.sub))
  _, acts, inner, _ = target_pass(apply, params, state, x, ss)
  z = spd_ci.ci_logits(cfg.ci_fn, state.ci, inner, acts, cfg.gelu)
  both = {s: spd_ci.sigmoids(v, cfg.sigmoid, cfg.leaky_alpha) for s, v in z.items()}
  g = {s: b[0] for s, b in both.items()}
  return (g, {s: b[1] for s, b in both.items()}) if with_upper else g


def loss(state: State, params, x, key, *, apply: Callable, cfg, step=None):
  """(total loss, metrics) on the batch x [B, ...] (§2.5); `key` draws the masks; `step` sets p
  when p is annealed."""
  check_batched(apply, params, x)
  ss = sites(apply, params, x, list(state.sub))
  y_star, acts, inner, ids = target_pass(apply, params, state, x, ss)
  y_star = jax.lax.stop_gradient(y_star)
  z = spd_ci.ci_logits(cfg.ci_fn, state.ci, inner, acts, cfg.gelu)
  both = {s: spd_ci.sigmoids(v, cfg.sigmoid, cfg.leaky_alpha) for s, v in z.items()}
  g, g_up = {s: b[0] for s, b in both.items()}, {s: b[1] for s, b in both.items()}
  recon = functools.partial(_recon, apply, params, state, x, y_star, ss=ss, cfg=cfg)
  source = spd_masks.SOURCES[cfg.mask_source]
  p = pnorm_at(step, cfg)
  terms = {"faithfulness": (cfg.faithfulness_coeff, lambda: faithfulness(params, state.sub)),
           "importance_minimality": (cfg.importance_minimality_coeff,
                                     lambda: importance_minimality(g_up, p, cfg.importance_eps))}

  def stochastic(of_masks: Callable, k):
    """The mean over S mask samples of of_masks(masks)."""
    total = 0.0
    for i in range(cfg.n_mask_samples):
      objective = lambda r: of_masks(spd_masks.masks(g, r))   # what an adversarial source ascends
      total = total + of_masks(spd_masks.masks(g, source(jax.random.fold_in(k, i), g, objective)))
    return total / cfg.n_mask_samples

  k_sr, k_srl = jax.random.split(key)
  layerwise = lambda m: sum(recon({s: m[s]}) for s in m) / len(m)
  terms["stochastic_recon"] = (cfg.stochastic_recon_coeff, lambda: stochastic(recon, k_sr))
  terms["stochastic_recon_layerwise"] = (cfg.stochastic_recon_layerwise_coeff,
                                         lambda: stochastic(layerwise, k_srl))
  terms["recon"] = (cfg.recon_coeff, lambda: recon(g))
  terms["recon_layerwise"] = (cfg.recon_layerwise_coeff,
                              lambda: sum(recon({s: g[s]}) for s in g) / len(g))
  terms["out_recon"] = (cfg.out_recon_coeff,
                        lambda: recon({s: jnp.ones_like(v) for s, v in g.items()}))
  terms["schatten"] = (cfg.schatten_coeff, lambda: _schatten(g_up, p, state, ss))
  emb = lambda m: embedding_recon(params, state, ss, ids, m)
  terms["embedding_recon"] = (cfg.embedding_recon_coeff,       # own draws, as the reference's
                              lambda: stochastic(emb, jax.random.fold_in(key, 2)))
  total, metrics = 0.0, {}
  for name, (coeff, fn) in terms.items():
    if coeff or name in ("faithfulness", "importance_minimality"):
      metrics[name] = fn()
      total = total + coeff * metrics[name]
  g_sg = jax.lax.stop_gradient(g)
  for s, v in g_sg.items():
    flat = v.reshape(-1, v.shape[-1])
    metrics[f"ci_l0/{s}"] = jnp.mean(jnp.sum(flat > 0.01, axis=-1))
    metrics[f"n_alive/{s}"] = jnp.sum(jnp.any(flat > 0.1, axis=0))
  if cfg.pnorm_final:
    metrics["pnorm"] = p
  return total, metrics


def _schatten(g_up, p, state, ss) -> jax.Array:
  """E_pos sum_c g_up^p (|u_c|^2 + |v_c|^2) summed over sites (the reference's 'Schatten')."""
  total = 0.0
  for s in ss:
    f = _site_factors(state, s)
    sq = jnp.sum(f.U[..., 0] ** 2, axis=1) + jnp.sum(f.V[..., 0] ** 2, axis=1)
    total = total + jnp.mean(_power(g_up[s.name], p) @ sq)
  return total


def sum_tied_updates(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """`optimizer` with every per-use tuple of its updates replaced by their sum, given to each
  copy: copies that start equal stay equal, each moved by all k uses' updates, each update from
  its own gradient and moments (k parameters on one storage, updated in turn). Same state as
  `optimizer`."""
  def update(updates, opt_state, params=None):
    updates, opt_state = optimizer.update(updates, opt_state, params)
    def tie(u):
      if not _copies(u):
        return u
      total = jax.tree.map(lambda *a: sum(a), *u)
      return (total,) * len(u)
    return updates._replace(sub={p: tie(u) for p, u in updates.sub.items()}), opt_state
  return optax.GradientTransformation(optimizer.init, update)


def make_update(apply: Callable, cfg, batch_fn: Callable, optimizer):
  """The SPD step ``(TrainState, frozen) -> (TrainState, metrics)`` (not jitted): `loss` on
  ``x = batch_fn(key)`` at the state's step (for p-annealing), then the optimiser (per-use tied
  updates summed, `sum_tied_updates`). Checks cfg."""
  validate(cfg)
  optimizer = sum_tied_updates(optimizer)

  def update(state: train.TrainState, frozen):
    loss_fn = train.loss_on_batches(functools.partial(loss, step=state.step), batch_fn,
                                    apply=apply, cfg=cfg)
    return train.make_update(loss_fn, optimizer)(state, frozen)

  return update
