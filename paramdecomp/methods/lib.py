"""LIB, the local interaction basis (docs/methods/lib.md §5), and the interaction basis (ib.md §4.3)

Works on a `paramdecomp.core.sequential.Sequential` view: node l is the input of layer l, node L the
output. Every node but the last carries a constant coordinate (last entry, = 1) that all biases of
the following layer multiply (bias folding). Activations per sample are handled as [T, D]
(positions × features; T = 1 for flat nodes). Row convention as in the reference code:
LIB activations are ``f_hat = f C`` and ``f ≈ f_hat C⁺``.

LIB's surface. LIB is not gradient-trained, so it has no init / loss / make_update; a build is
    `default_config()`, `validate(cfg)`;
    `node_moments(seq, params, x, cfg)`: each node's (μ, E[f fᵀ]) over data x (§5.2 steps 1-3);
    `bases_from_moments(seq, params, x, moments, cfg)` -> [NodeBasis] (steps 4a-h, last node
    first), or `build_bases(seq, params, x, cfg)` for both;
    `build_edges(seq, params, x, bases, cfg)` -> [E^l] (§5.3).
Every public function takes ``(seq, params, x, node, ...)`` in that order (as do the ablation and
degeneracy functions). `runs/build_lib.py` joins them with ablations and degeneracy into a run.

Dataset sums (Gram matrices, Jacobian moments, edges, ablation scores) run in jitted `lax.scan`s
over chunks of the data (`core.scan`, compiled once per shape: params and bases are traced
arguments, the view and config static); the eigendecompositions run on the host in float64.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from paramdecomp.core import config as cfglib
from paramdecomp.core import pytree, scan, sequential
from paramdecomp.core.sequential import Sequential

PyTree = Any
FORMULAS = ("jacobian", "(1-alpha)^2", "(1-0)*alpha", "svd", "pca", "neuron")
INTEGRATION = ("gradient", "trapezoidal", "gauss-legendre")
EDGE_FORMULAS = ("squared", "functional")
TRUNCATIONS = ("relative", "absolute")


def cutoff(eigenvalues: np.ndarray, cfg) -> float:
  """The truncation threshold for a matrix with these eigenvalues: `truncation_threshold` times
  the largest |eigenvalue| ('relative'), or as it is ('absolute')."""
  if cfg.truncation == "absolute":
    return cfg.truncation_threshold
  top = float(np.max(np.abs(eigenvalues))) if np.size(eigenvalues) else 0.0
  return cfg.truncation_threshold * top


def default_config() -> ml_collections.ConfigDict:
  """LIB settings; defaults are the mod-add build of §5.5."""
  return ml_collections.ConfigDict(dict(
      formula="jacobian",          # one of FORMULAS; pca = svd with centring
      center=True,                 # centre the Gram matrices (constant direction kept apart)
      rotate_final=False,          # final node: identity (False) or its (uncentred) PCA basis
      # drop Gram and M eigenvalues at or below the threshold: relative to the matrix's largest
      # eigenvalue (float64 rounding noise scales with it), or absolute (the reference code's
      # rule, 1e-15, kept for reproducing its figures)
      truncation="relative",
      truncation_threshold=1e-12,
      integration="gradient",      # rule for the basis integrals (INTEGRATION)
      n_intervals=0,               # intervals of the trapezoidal / Gauss-Legendre rules
      jacobian_target="next_layer",  # next_layer (LIB) | output (Jacobian to the final node)
      stochastic_sources=0,        # R > 0: R random ±1 sources over (position, feature) of the
      stochastic_sources_pos=0,    # R > 0: R random ±1 sources over positions, exact features
      edge_formula="squared",      # squared | functional
      edge_integration="gradient",
      edge_n_intervals=0,
      edge_stochastic_sources=0,   # R > 0: R random ±1 combinations of output positions
      edge_mode="auto",            # forward (jvp per input feature) | reverse (vjp per output)
      dtype="float64",             # of every dataset sum (float64 needs jax_enable_x64)
      chunk_size=128,              # samples per scanned chunk
      seed=0,                      # of the stochastic sources
  ))


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raise ConfigError naming the first unknown or invalid field of a LIB config."""
  cfglib.check_fields(cfg, default_config())
  cfglib.one_of(cfg, "formula", FORMULAS)
  cfglib.one_of(cfg, "integration", INTEGRATION)
  cfglib.one_of(cfg, "edge_integration", INTEGRATION)
  cfglib.one_of(cfg, "edge_formula", EDGE_FORMULAS)
  cfglib.one_of(cfg, "jacobian_target", ("next_layer", "output"))
  cfglib.one_of(cfg, "dtype", ("float32", "float64"))
  cfglib.one_of(cfg, "edge_mode", ("auto", "forward", "reverse"))
  cfglib.positive(cfg, "chunk_size")
  cfglib.require(cfg.truncation_threshold >= 0, "truncation_threshold", "must be >= 0")
  cfglib.one_of(cfg, "truncation", TRUNCATIONS)
  for f in ("n_intervals", "edge_n_intervals", "stochastic_sources", "stochastic_sources_pos",
            "edge_stochastic_sources"):
    cfglib.require(cfg[f] >= 0, f, f"must be >= 0, got {cfg[f]}")
  cfglib.require(not (cfg.stochastic_sources and cfg.stochastic_sources_pos),
                 "stochastic_sources", "set at most one of stochastic_sources(_pos)")
  cfglib.require(cfg.formula not in ("(1-alpha)^2",) or cfg.integration != "gradient",
                 "integration", "the (1-alpha)^2 formula vanishes at alpha = 1: use trapezoidal "
                 "or gauss-legendre")
  cfglib.require(cfg.edge_formula != "functional" or cfg.edge_integration != "gradient",
                 "edge_integration", "the functional edge formula vanishes at alpha = 1: use "
                 "trapezoidal or gauss-legendre")
  cfglib.require(cfg.dtype != "float64" or jax.config.jax_enable_x64, "dtype",
                 "float64 needs jax.config.update('jax_enable_x64', True) before any jax work")


# --------------------------------------------------------------------------- integration rules

def integration_points(rule: str, n_intervals: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(alphas, weights) of an integral over alpha in [0, 1]; weights sum to 1 (§5.2 d)."""
  if rule == "gradient":
    return np.ones(1), np.ones(1)
  n = max(int(n_intervals), 1)
  if rule == "trapezoidal":
    eps = 1e-3 / (n + 1)
    alphas = np.linspace(eps, 1 - eps, n + 1)
    w = np.full(n + 1, 1.0 / n)
    w[[0, -1]] *= 0.5
    return alphas, w
  if rule == "gauss-legendre":
    x, w = np.polynomial.legendre.leggauss(n + 1)
    return (x + 1) / 2, w / 2
  raise ValueError(f"unknown integration rule {rule!r}; use one of {INTEGRATION}")


# --------------------------------------------------------------------------- the network view

class View(NamedTuple):
  """Shapes of a sequential view's nodes, as [T, d] per sample (d without the constant)."""
  shapes: tuple       # per-sample node shapes as the model produces them
  td: tuple           # (T, d) per node

  @property
  def last(self) -> int:
    return len(self.td) - 1

  def dim(self, l: int) -> int:
    """Feature dimension of node l including its constant coordinate (none on the last node)."""
    return self.td[l][1] + (l != self.last)


def view_of(seq: Sequential, params: PyTree, x_one: jax.Array) -> View:
  """Node shapes of `seq` from one sample's abstract evaluation. A node [d] is one position;
  [T, d] (a sequence) or [H, W, C] (a feature map) is T = H*W positions of d = C features, the
  basis shared across positions."""
  nodes = jax.eval_shape(functools.partial(sequential.node_activations, seq), params, x_one)
  shapes = tuple(a.shape for a in nodes)
  if any(len(s) == 0 for s in shapes):
    raise ValueError(f"node shapes must be [d], [T, d] or [H, W, C] per sample, got {shapes}")
  td = tuple((math.prod(s[:-1]), s[-1]) for s in shapes)
  sequential.check_bias_folding(seq, params, nodes)
  return View(shapes, td)


def _view(seq: Sequential, params: PyTree, x) -> View:
  return view_of(seq, params, jax.tree.map(lambda a: a[0], x))


def augment(f: jax.Array, c, node: int, view: View) -> jax.Array:
  """One sample's node activation (model shape) as [T, D]: with the constant c appended
  (no constant on the last node)."""
  f = f.reshape(view.td[node])
  return f if node == view.last else jnp.concatenate([f, sequential.constant_like(f, c)], -1)


def unaugment(fa: jax.Array, node: int, view: View):
  """(f in the model's node shape, c) of one sample's augmented activation fa [T, D]; c is the
  mean of its constant coordinates (1 unless an ablation moved them; 1 on the last node)."""
  if node == view.last:
    return fa.reshape(view.shapes[node]), jnp.ones((), fa.dtype)
  return fa[:, :-1].reshape(view.shapes[node]), jnp.mean(fa[:, -1])


def node_acts(seq: Sequential, params: PyTree, x: jax.Array, node: int) -> jax.Array:
  """Node `node`'s activations for a batch x, augmented with the constant: [B, T, dim(node)]."""
  return _batch_augment(sequential.activation(seq, params, x, node), node == len(seq.layers))


def _batch_augment(f: jax.Array, last: bool) -> jax.Array:
  """A batch of node activations [B, d] or [B, T, d] as [B, T, D] (constant appended unless
  `last`)."""
  f = f.reshape((f.shape[0], -1, f.shape[-1]))
  return f if last else jnp.concatenate([f, sequential.constant_like(f, 1.0)], -1)


def aug_forward(seq: Sequential, params: PyTree, fa: jax.Array, node: int, stop: int,
                view: View) -> jax.Array:
  """Layers node..stop-1 as a map of one sample's augmented activations [T_in, D_in] ->
  [T_out, D_out]: the biases are scaled by the mean of the input's constant coordinates, and
  the output's constant coordinate carries that value on (§5.2 step 0)."""
  f, c = unaugment(fa, node, view)
  return augment(sequential.forward_from(seq, params, f, node, stop, c), c, stop, view)


def _moments_chunk(seq, nodes, p, xb, w, i):
  acts = sequential.node_activations(seq, p, xb)   # one forward pass for every node
  out = []
  for node in nodes:
    f = acts[node].reshape((-1, acts[node].shape[-1]))                 # [B·T, d]
    fw = f * jnp.repeat(w, f.shape[0] // w.shape[0])[:, None]
    out.append((fw.sum(0), fw.T @ f))
  return out


def _moments(seq, params, x, nodes: tuple, chunk_size: int) -> list[tuple]:
  """[(mean μ [D], uncentred second moment E[f fᵀ] [D, D])] of the given nodes (augmented; over
  samples and positions), summed in one scan over x.

  The constant coordinate's moments are assembled here, not summed (E[1] = 1, E[f·1] = μ):
  concatenating it inside the scan makes the program much slower to compile."""
  sums = scan.dataset_sum(scan.bind(_moments_chunk, seq, nodes), params, x, chunk_size)
  view, n = _view(seq, params, x), jax.tree.leaves(x)[0].shape[0]
  out = []
  for l, (s1, s2) in zip(nodes, sums):
    count = n * view.td[l][0]
    mu, second = np.asarray(s1, np.float64) / count, np.asarray(s2, np.float64) / count
    if l != view.last:
      mu, second = np.r_[mu, 1.0], np.block([[second, mu[:, None]], [mu[None, :], np.ones((1, 1))]])
    out.append((mu, second))
  return out


def node_moments(seq: Sequential, params: PyTree, x, cfg) -> list[tuple]:
  """[(μ, E[f fᵀ])] of every node over x in cfg.dtype, in one pass (§5.2 steps 1-3)."""
  validate(cfg)
  check_data(x)
  params, x = scan.cast(params, cfg.dtype), scan.cast(x, cfg.dtype)
  return _moments(seq, params, x, tuple(range(len(seq.layers) + 1)), cfg.chunk_size)


def check_data(x) -> None:
  """Raise on a data set LIB cannot sum over: empty, or holding NaN / inf (named by leaf)."""
  leaves = jax.tree.leaves(x)
  if not leaves or leaves[0].ndim == 0 or leaves[0].shape[0] == 0:
    raise ValueError(f"LIB's data is empty (shapes {[np.shape(a) for a in leaves]}); it needs "
                     "x [N, ...] with N >= 1")
  pytree.check_finite(x, "LIB data")


def centering_matrix(mu: np.ndarray) -> np.ndarray:
  """Y with f Y = f - μ on the feature coordinates and the constant (last) coordinate kept."""
  y = np.eye(mu.shape[0])
  y[-1, :-1] = -mu[:-1]
  return y


# --------------------------------------------------------------------------- bases

class NodeBasis(NamedTuple):
  """One node's basis. C: [D, k] (columns are directions), C_pinv: [k, D], Lambda: [k]
  (importance; the constant direction first when `n_const`), gram_eigenvalues: [D] (all, sorted
  descending), n_const: 1 if direction 0 is the constant direction."""
  C: np.ndarray
  C_pinv: np.ndarray
  Lambda: np.ndarray
  gram_eigenvalues: np.ndarray
  n_const: int


def gram_eigenbasis(mu: np.ndarray, second: np.ndarray, center: bool, has_const: bool, cfg):
  """Steps 4a-c: (D, U, W, W⁺, n_const, all eigenvalues) of the (centred) Gram matrix, D and U
  truncated at `cutoff`, the constant direction first when centring."""
  y = centering_matrix(mu) if (center and has_const) else np.eye(mu.shape[0])
  g = y.T @ second @ y
  d, u = np.linalg.eigh(g)
  d = np.abs(d)
  order = np.argsort(-d, kind="stable")
  d_all, u = d[order], u[:, order]
  tau = cutoff(d_all, cfg)
  n_const = 0
  if center and has_const:
    cand = np.nonzero((np.abs(u[-1]) > 1e-6) & (d_all > tau))[0]
    if len(cand) != 1:
      raise ValueError(f"expected one constant direction in the centred Gram matrix, found "
                       f"{len(cand)} (is the constant coordinate degenerate with a feature?)")
    k = cand[0]
    order = np.r_[k, np.delete(np.arange(len(d_all)), k)]
    d_all, u = d_all[order], u[:, order]
    n_const = 1
  keep = d_all > tau
  d, u = d_all[keep], u[:, keep]
  w = y @ u
  w_pinv = u.T @ np.linalg.inv(y)
  return d, u, w, w_pinv, n_const, np.sort(d_all)[::-1]


def masked_eigh(m: np.ndarray, n_mask: int):
  """(Λ, V) of symmetric m: the first n_mask coordinates kept as they are (their diagonal as
  eigenvalues), the rest eigendecomposed, sorted descending (§5.2 f)."""
  lam_r, v_r = np.linalg.eigh(m[n_mask:, n_mask:])
  order = np.argsort(-lam_r, kind="stable")
  lam_r, v_r = lam_r[order], v_r[:, order]
  k = m.shape[0]
  v = np.zeros((k, k))
  v[:n_mask, :n_mask] = np.eye(n_mask)
  v[n_mask:, n_mask:] = v_r
  return np.r_[np.diag(m)[:n_mask], lam_r], v


def _cotangents(cfg, key, t_out: int, k_out: int, dtype) -> jax.Array:
  """[n_c, T_out, k_out] output sources whose Σ_c (cᵀJ)ᵀ(cᵀJ) estimates Σ_{t,i} J_tiᵀ J_ti."""
  if cfg.stochastic_sources:
    r = cfg.stochastic_sources
    return jax.random.rademacher(key, (r, t_out, k_out), dtype) / math.sqrt(r)
  if cfg.stochastic_sources_pos:
    r = cfg.stochastic_sources_pos
    phi = jax.random.rademacher(key, (r, t_out), dtype) / math.sqrt(r)
    return jnp.einsum("rt,ik->rkti", phi, jnp.eye(k_out, dtype=dtype)).reshape(
        r * k_out, t_out, k_out)
  return jnp.eye(t_out * k_out, dtype=dtype).reshape(t_out * k_out, t_out, k_out)


def _jacobian_chunk(seq, view, node, stop, cfg, args, xb, w, i):
  p, cn, al, wt = args
  g_hat = lambda fa: aug_forward(seq, p, fa, node, stop, view) @ cn  # noqa: E731
  fa = node_acts(seq, p, xb, node)
  keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(cfg.seed), i), fa.shape[0])
  t_out, k_out = view.td[stop][0], cn.shape[1]

  def per_sample(f1, key):
    if cfg.formula == "jacobian":
      cot = _cotangents(cfg, key, t_out, k_out, f1.dtype)

      def at(a):
        _, pull = jax.vjp(g_hat, a * f1)
        return jax.vmap(lambda u: pull(u)[0])(cot)
      jbar = jnp.tensordot(wt, jax.vmap(at)(al), 1)          # [n_c, T_in, D]
      return jnp.einsum("csi,csj->ij", jbar, jbar), jnp.zeros(())
    out1 = g_hat(f1)
    if cfg.formula == "(1-alpha)^2":
      scalar = lambda a: -jnp.sum((out1 - g_hat(a)) ** 2)  # noqa: E731
    else:
      ref = out1 - g_hat(jnp.zeros_like(f1))
      scalar = lambda a: jnp.sum(g_hat(a) * ref)  # noqa: E731
    g = jnp.tensordot(wt, jax.vmap(lambda a: jax.grad(scalar)(a * f1))(al), 1)  # [T_in, D]
    return jnp.einsum("si,sj->ij", g, g), jnp.einsum("si,sj->ij", g, f1)

  m, lam = jax.vmap(per_sample)(fa, keys)
  return jnp.einsum("b,bij->ij", w, m), jnp.einsum("b,b...->...", w, lam)


def jacobian_moments(seq: Sequential, params: PyTree, x, node: int, c_next, cfg,
                     stop: int | None = None):
  """M' [D, D] of a node (§5.2 d), and for the g-formulas also Λ' = E[g fᵀ] (else None).

  The map differentiated is f -> aug_forward(node -> stop)(f) C_next (stop default node + 1),
  integrated over alpha with the config's rule; sums run over samples and input positions and
  are divided by N·T_in."""
  stop = node + 1 if stop is None else stop
  view = _view(seq, params, x)
  alphas, weights = integration_points(cfg.integration, cfg.n_intervals)
  dtype = jnp.dtype(cfg.dtype)
  args = (params, jnp.asarray(c_next, dtype), jnp.asarray(alphas, dtype),
          jnp.asarray(weights, dtype))
  fn = scan.bind(_jacobian_chunk, seq, view, node, stop, ml_collections.FrozenConfigDict(cfg))
  m, lam = scan.dataset_sum(fn, args, x, cfg.chunk_size)
  n = jax.tree.leaves(x)[0].shape[0] * view.td[node][0]
  m = np.asarray(m, np.float64) / n
  return m, (None if cfg.formula == "jacobian" else np.asarray(lam, np.float64) / n)


def final_basis(mu, second, cfg) -> NodeBasis:
  """The last node: identity, or with rotate_final its uncentred PCA rotation (no whitening)."""
  d = second.shape[0]
  eig = np.sort(np.abs(np.linalg.eigvalsh(second)))[::-1]
  if not cfg.rotate_final:
    return NodeBasis(np.eye(d), np.eye(d), np.diag(second).copy(), eig, 0)
  lam, u = np.linalg.eigh(second)
  order = np.argsort(-np.abs(lam), kind="stable")
  lam, u = np.abs(lam[order]), u[:, order]
  keep = lam > cutoff(lam, cfg)
  return NodeBasis(u[:, keep], u[:, keep].T, lam[keep], eig, 0)


def neuron_basis(second) -> NodeBasis:
  """The neuron baseline of a node with a constant: the coordinates, constant first, then by
  decreasing E[f_i²]."""
  diag = np.diag(second)
  order = np.r_[len(diag) - 1, np.argsort(-diag[:-1], kind="stable")]
  perm = np.eye(len(diag))[:, order]
  eig = np.sort(np.abs(np.linalg.eigvalsh(second)))[::-1]
  return NodeBasis(perm, perm.T, diag[order], eig, 1)


def node_basis(seq: Sequential, params: PyTree, x, node: int, moments, next_basis: NodeBasis,
               cfg, target_basis: NodeBasis | None = None) -> NodeBasis:
  """Steps 4a-h for a node < L from its moments (μ, E[f fᵀ]) given the next node's basis (or,
  for jacobian_target = output, the final node's `target_basis`)."""
  mu, second = moments
  if cfg.formula == "neuron":
    return neuron_basis(second)
  d, _, w, w_pinv, n_const, eig = gram_eigenbasis(mu, second, cfg.center or cfg.formula == "pca",
                                                  True, cfg)
  if cfg.formula in ("svd", "pca"):
    return NodeBasis(w, w_pinv, d, eig, n_const)
  r, r_pinv = w / np.sqrt(d), np.sqrt(d)[:, None] * w_pinv
  stop, tgt = (node + 1, next_basis) if cfg.jacobian_target == "next_layer" else (
      len(seq.layers), target_basis)
  m_raw, lam_raw = jacobian_moments(seq, params, x, node, tgt.C, cfg, stop=stop)
  m = r_pinv @ m_raw @ r_pinv.T
  m = (m + m.T) / 2
  lam, v = masked_eigh(m, n_const)
  if lam_raw is not None:   # the g-formulas scale by |diag(Vᵀ R⁺ Λ' R V)|
    lam = np.abs(np.diag(v.T @ r_pinv @ lam_raw @ r @ v))
  keep = np.r_[np.ones(n_const, bool), lam[n_const:] > cutoff(lam, cfg)]
  lam, v = lam[keep], v[:, keep]
  scale = np.where(lam > 0, lam, 1.0)   # a null constant direction keeps unit scale
  c = r @ v * np.sqrt(scale)
  c_pinv = (v.T @ r_pinv) / np.sqrt(scale)[:, None]
  return NodeBasis(c, c_pinv, lam, eig, n_const)


def build_bases(seq: Sequential, params: PyTree, x, cfg) -> list[NodeBasis]:
  """Bases of every node of `seq` (last node first computed, §5.2 steps 1-4) over data x."""
  return bases_from_moments(seq, params, x, node_moments(seq, params, x, cfg), cfg)


def bases_from_moments(seq: Sequential, params: PyTree, x, moments, cfg) -> list[NodeBasis]:
  """The bases given each node's (μ, E[f fᵀ]) from `node_moments` (lets a caller time or save
  the Gram pass apart)."""
  validate(cfg)
  params, x = scan.cast(params, cfg.dtype), scan.cast(x, cfg.dtype)
  chex.assert_equal(len(moments), len(seq.layers) + 1)
  bases = [None] * len(moments)
  bases[-1] = final_basis(*moments[-1], cfg)
  for l in range(len(moments) - 2, -1, -1):
    bases[l] = node_basis(seq, params, x, l, moments[l], bases[l + 1], cfg, bases[-1])
  return bases


# --------------------------------------------------------------------------- edges

def _edge_chunk(seq, view, node, cfg, args, xb, w, i):
  p, c_in, c_in_pinv, c_out, al, wt = args
  t_out = view.td[node + 1][0]
  k_in, k_out = c_in.shape[1], c_out.shape[1]
  forward = cfg.edge_mode == "forward" or (cfg.edge_mode == "auto" and k_in <= t_out * k_out)
  n_src = cfg.edge_stochastic_sources
  f_hat = lambda h: aug_forward(seq, p, h @ c_in_pinv, node, node + 1, view) @ c_out  # noqa: E731
  fh = node_acts(seq, p, xb, node) @ c_in                       # [B, T_in, k_in]
  keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(cfg.seed + 1), i), fh.shape[0])

  def per_sample(h, key):
    eye = jnp.eye(k_in, dtype=h.dtype)

    def a_at(a):   # A[j, t, i] = Σ_s ∂F_ti/∂h_sj (a h) h_sj
      if forward:
        _, lin = jax.linearize(f_hat, a * h)
        return jax.vmap(lambda e: lin(h * e))(eye)
      jac = jax.jacrev(f_hat)(a * h)                            # [T_out, k_out, T_in, k_in]
      return jnp.einsum("tisj,sj->jti", jac, h)
    a_all = jax.vmap(a_at)(al)                                  # [n_alpha, k_in, T_out, k_out]
    if cfg.edge_formula == "functional":
      diff = f_hat(h)[None] - jax.vmap(lambda a: f_hat(a * h))(al)
      return 2 * jnp.einsum("a,ati,ajti->ij", wt, diff, a_all)
    abar = jnp.tensordot(wt, a_all, 1)
    if n_src:
      phi = jax.random.rademacher(key, (n_src, t_out), h.dtype) / math.sqrt(n_src)
      abar = jnp.einsum("rt,jti->jri", phi, abar)
    return jnp.einsum("jti->ij", abar ** 2)

  e = jax.vmap(per_sample)(fh, keys)
  return jnp.einsum("b,bij->ij", w, e)


def edges(seq: Sequential, params: PyTree, x, node: int, basis_in: NodeBasis,
          basis_out: NodeBasis, cfg) -> np.ndarray:
  """Interaction strengths E [k_out, k_in] between the bases of nodes `node` and node + 1
  (§5.3)."""
  view = _view(seq, params, x)
  alphas, weights = integration_points(cfg.edge_integration, cfg.edge_n_intervals)
  dtype = jnp.dtype(cfg.dtype)
  args = (params, *(jnp.asarray(a, dtype) for a in (basis_in.C, basis_in.C_pinv, basis_out.C,
                                                    alphas, weights)))
  fn = scan.bind(_edge_chunk, seq, view, node, ml_collections.FrozenConfigDict(cfg))
  e = scan.dataset_sum(fn, args, x, cfg.chunk_size)
  return np.asarray(e, np.float64) / (jax.tree.leaves(x)[0].shape[0] * view.td[node][0])


def build_edges(seq: Sequential, params: PyTree, x, bases: list[NodeBasis],
                cfg) -> list[np.ndarray]:
  """[E^l for l < L]: the edges between consecutive bases of `build_bases` over data x."""
  validate(cfg)
  params, x = scan.cast(params, cfg.dtype), scan.cast(x, cfg.dtype)
  chex.assert_equal(len(bases), len(seq.layers) + 1)
  return [edges(seq, params, x, l, bases[l], bases[l + 1], cfg) for l in range(len(seq.layers))]
