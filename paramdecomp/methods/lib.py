"""LIB, the local interaction basis (docs/methods/lib.md §5), and the interaction basis (ib.md §4.3)

Works on a `paramdecomp.core.sequential.Sequential` view: node l is the input of layer l, node L the
output. Every node but the last carries a constant coordinate (last entry, = 1) that all biases of
the following layer multiply (bias folding). Activations per sample are handled as [T, D]
(positions × features; T = 1 for flat nodes). Row convention as in the reference code:
LIB activations are ``f_hat = f C`` and ``f ≈ f_hat C⁺``.

Dataset sums (Gram matrices, Jacobian moments, edges, ablation scores) run in jitted `lax.scan`s
over chunks of the data, with the params a traced argument; the eigendecompositions run on the
host in float64.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from paramdecomp.core import config as cfglib
from paramdecomp.core import scan, sequential
from paramdecomp.core.sequential import Sequential

PyTree = Any
FORMULAS = ("jacobian", "(1-alpha)^2", "(1-0)*alpha", "svd", "pca", "neuron")
INTEGRATION = ("gradient", "trapezoidal", "gauss-legendre")
EDGE_FORMULAS = ("squared", "functional")


def default_config() -> ml_collections.ConfigDict:
  """LIB settings; defaults are the mod-add build of §5.5."""
  return ml_collections.ConfigDict(dict(
      formula="jacobian",          # one of FORMULAS; pca = svd with centring
      center=True,                 # centre the Gram matrices (constant direction kept apart)
      rotate_final=False,          # final node: identity (False) or its (uncentred) PCA basis
      truncation_threshold=1e-15,  # drop Gram and M eigenvalues at or below this
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
  """Node shapes of `seq` from one sample's abstract evaluation."""
  shapes, f = [], jax.eval_shape(seq.input_fn, params, x_one)
  shapes.append(f.shape)
  for layer in seq.layers:
    f = jax.eval_shape(lambda p, v, layer=layer: layer(p, v, 1.0), params, f)
    shapes.append(f.shape)
  td = []
  for s in shapes:
    if len(s) not in (1, 2):
      raise ValueError(f"node shapes must be [d] or [T, d] per sample, got {shapes}")
    td.append((1, s[0]) if len(s) == 1 else tuple(s))
  return View(tuple(shapes), tuple(td))


def node_acts(seq: Sequential, params: PyTree, view: View, l: int, x: jax.Array) -> jax.Array:
  """Node l's activations for a batch x, augmented with the constant: [B, T, dim(l)]."""
  f = seq.input_fn(params, x)
  for layer in seq.layers[:l]:
    f = layer(params, f, 1.0)
  t, d = view.td[l]
  f = f.reshape((x.shape[0], t, d))
  return f if l == view.last else jnp.concatenate([f, sequential.constant_like(f, 1.0)], -1)


def aug_section(seq: Sequential, params: PyTree, view: View, start: int, stop: int) -> Callable:
  """Layers start..stop-1 as a map of augmented activations [T_in, D_in] -> [T_out, D_out].

  The biases are scaled by the mean of the input's constant coordinates, and the output's
  constant coordinate carries that value on (§5.2 step 0)."""

  def g(fa):
    c = jnp.mean(fa[:, -1])
    f = fa[:, :-1].reshape(view.shapes[start])
    for layer in seq.layers[start:stop]:
      f = layer(params, f, c)
    out = f.reshape(view.td[stop])
    if stop != view.last:
      out = jnp.concatenate([out, sequential.constant_like(out, c)], -1)
    return out
  return g


def gram(seq: Sequential, params: PyTree, view: View, l: int, x, chunk_size: int = 128):
  """(mean μ [D], uncentred second moment E[f fᵀ] [D, D]) of node l over x and positions."""
  t = view.td[l][0]

  def fn(p, xb, w, i):
    f = node_acts(seq, p, view, l, xb)
    return jnp.einsum("b,bsi->i", w, f), jnp.einsum("b,bsi,bsj->ij", w, f, f)

  s1, s2 = scan.dataset_sum(fn, params, x, chunk_size)
  n = jax.tree.leaves(x)[0].shape[0] * t
  return np.asarray(s1, np.float64) / n, np.asarray(s2, np.float64) / n


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


def gram_eigenbasis(mu: np.ndarray, second: np.ndarray, center: bool, has_const: bool,
                    tau: float):
  """Steps 4a-c: (D, U, W, W⁺, n_const, all eigenvalues) of the (centred) Gram matrix, D and U
  truncated at tau, the constant direction first when centring."""
  y = centering_matrix(mu) if (center and has_const) else np.eye(mu.shape[0])
  g = y.T @ second @ y
  d, u = np.linalg.eigh(g)
  d = np.abs(d)
  order = np.argsort(-d, kind="stable")
  d_all, u = d[order], u[:, order]
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


def jacobian_moments(seq, params, view, l, stop, c_next, x, cfg):
  """M' [D, D] of node l (§5.2 d), and for the g-formulas also Λ' = E[g fᵀ] (else None).

  The map differentiated is f -> aug_section(l, stop)(f) C_next, integrated over alpha with the
  config's rule; sums run over samples and input positions and are divided by N·T_in."""
  alphas, weights = integration_points(cfg.integration, cfg.n_intervals)
  dtype = jnp.dtype(cfg.dtype)
  t_out, k_out = view.td[stop][0], c_next.shape[1]
  formula = cfg.formula

  def fn(args, xb, w, i):
    p, cn, al, wt = args
    sec = aug_section(seq, p, view, l, stop)
    g_hat = lambda fa: sec(fa) @ cn  # noqa: E731
    fa = node_acts(seq, p, view, l, xb)
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(cfg.seed), i), fa.shape[0])

    def per_sample(f1, key):
      if formula == "jacobian":
        cot = _cotangents(cfg, key, t_out, k_out, f1.dtype)

        def at(a):
          _, pull = jax.vjp(g_hat, a * f1)
          return jax.vmap(lambda u: pull(u)[0])(cot)
        jbar = jnp.tensordot(wt, jax.vmap(at)(al), 1)          # [n_c, T_in, D]
        return jnp.einsum("csi,csj->ij", jbar, jbar), jnp.zeros(())
      out1 = g_hat(f1)
      if formula == "(1-alpha)^2":
        scalar = lambda a: -jnp.sum((out1 - g_hat(a)) ** 2)  # noqa: E731
      else:
        ref = out1 - g_hat(jnp.zeros_like(f1))
        scalar = lambda a: jnp.sum(g_hat(a) * ref)  # noqa: E731
      g = jnp.tensordot(wt, jax.vmap(lambda a: jax.grad(scalar)(a * f1))(al), 1)  # [T_in, D]
      return jnp.einsum("si,sj->ij", g, g), jnp.einsum("si,sj->ij", g, f1)

    m, lam = jax.vmap(per_sample)(fa, keys)
    return jnp.einsum("b,bij->ij", w, m), jnp.einsum("b,b...->...", w, lam)

  args = (params, jnp.asarray(c_next, dtype), jnp.asarray(alphas, dtype),
          jnp.asarray(weights, dtype))
  m, lam = scan.dataset_sum(fn, args, x, cfg.chunk_size)
  n = jax.tree.leaves(x)[0].shape[0] * view.td[l][0]
  m = np.asarray(m, np.float64) / n
  return m, (None if formula == "jacobian" else np.asarray(lam, np.float64) / n)


def final_basis(mu, second, view: View, cfg) -> NodeBasis:
  """The last node: identity, or with rotate_final its uncentred PCA rotation (no whitening)."""
  d = view.td[view.last][1]
  eig = np.sort(np.abs(np.linalg.eigvalsh(second)))[::-1]
  if not cfg.rotate_final:
    return NodeBasis(np.eye(d), np.eye(d), np.diag(second).copy(), eig, 0)
  lam, u = np.linalg.eigh(second)
  order = np.argsort(-np.abs(lam), kind="stable")
  lam, u = np.abs(lam[order]), u[:, order]
  keep = lam > cfg.truncation_threshold
  return NodeBasis(u[:, keep], u[:, keep].T, lam[keep], eig, 0)


def node_basis(seq, params, view, l, mu, second, next_basis: NodeBasis | None, x, cfg,
               target_basis: NodeBasis | None = None) -> NodeBasis:
  """Steps 4a-h for node l < L given the next node's basis (or the final node's for
  jacobian_target = output)."""
  tau = cfg.truncation_threshold
  has_const = l != view.last
  formula = cfg.formula
  center = cfg.center or formula == "pca"
  if formula == "neuron":
    diag = np.diag(second)
    order = np.r_[len(diag) - 1, np.argsort(-diag[:-1], kind="stable")] if has_const else (
        np.argsort(-diag, kind="stable"))
    perm = np.eye(len(diag))[:, order]
    eig = np.sort(np.abs(np.linalg.eigvalsh(second)))[::-1]
    return NodeBasis(perm, perm.T, diag[order], eig, int(has_const))
  d, _, w, w_pinv, n_const, eig = gram_eigenbasis(mu, second, center, has_const, tau)
  if formula in ("svd", "pca"):
    return NodeBasis(w, w_pinv, d, eig, n_const)
  r, r_pinv = w / np.sqrt(d), np.sqrt(d)[:, None] * w_pinv
  stop, tgt = (l + 1, next_basis) if cfg.jacobian_target == "next_layer" else (
      view.last, target_basis)
  m_raw, lam_raw = jacobian_moments(seq, params, view, l, stop, tgt.C, x, cfg)
  m = r_pinv @ m_raw @ r_pinv.T
  m = (m + m.T) / 2
  lam, v = masked_eigh(m, n_const)
  if lam_raw is not None:   # the g-formulas scale by |diag(Vᵀ R⁺ Λ' R V)|
    lam = np.abs(np.diag(v.T @ r_pinv @ lam_raw @ r @ v))
  keep = np.r_[np.ones(n_const, bool), lam[n_const:] > tau]
  lam, v = lam[keep], v[:, keep]
  scale = np.where(lam > 0, lam, 1.0)   # a null constant direction keeps unit scale
  c = r @ v * np.sqrt(scale)
  c_pinv = (v.T @ r_pinv) / np.sqrt(scale)[:, None]
  return NodeBasis(c, c_pinv, lam, eig, n_const)


def build_bases(seq: Sequential, params: PyTree, x, cfg) -> list[NodeBasis]:
  """Bases of every node of `seq` (last node first computed, §5.2 steps 1-4) over data x."""
  validate(cfg)
  params, x = scan.cast(params, cfg.dtype), scan.cast(x, cfg.dtype)
  view = view_of(seq, params, jax.tree.map(lambda a: a[0], x))
  moments = [gram(seq, params, view, l, x, cfg.chunk_size) for l in range(view.last + 1)]
  return bases_from_moments(seq, params, view, moments, x, cfg)


def bases_from_moments(seq, params, view, moments, x, cfg) -> list[NodeBasis]:
  """The bases given each node's (μ, E[f fᵀ]) (lets a caller time the Gram pass apart)."""
  validate(cfg)
  params, x = scan.cast(params, cfg.dtype), scan.cast(x, cfg.dtype)
  bases = [None] * (view.last + 1)
  bases[-1] = final_basis(*moments[-1], view, cfg)
  for l in range(view.last - 1, -1, -1):
    bases[l] = node_basis(seq, params, view, l, *moments[l], bases[l + 1], x, cfg, bases[-1])
  return bases


# --------------------------------------------------------------------------- edges

def edges(seq, params, view, l, basis_in: NodeBasis, basis_out: NodeBasis, x, cfg) -> np.ndarray:
  """Interaction strengths E [k_out, k_in] between the bases of nodes l and l+1 (§5.3)."""
  alphas, weights = integration_points(cfg.edge_integration, cfg.edge_n_intervals)
  dtype = jnp.dtype(cfg.dtype)
  t_out = view.td[l + 1][0]
  k_in, k_out = basis_in.C.shape[1], basis_out.C.shape[1]
  functional = cfg.edge_formula == "functional"
  n_src = cfg.edge_stochastic_sources
  forward = cfg.edge_mode == "forward" or (cfg.edge_mode == "auto" and k_in <= t_out * k_out)

  def fn(args, xb, w, i):
    p, c_in, c_in_pinv, c_out, al, wt = args
    sec = aug_section(seq, p, view, l, l + 1)
    f_hat = lambda h: sec(h @ c_in_pinv) @ c_out  # noqa: E731
    fh = node_acts(seq, p, view, l, xb) @ c_in                  # [B, T_in, k_in]
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(cfg.seed + 1), i), fh.shape[0])

    def per_sample(h, key):
      eye = jnp.eye(k_in, dtype=h.dtype)

      def a_at(a):   # A[j, t, i] = Σ_s ∂F_ti/∂h_sj (a h) h_sj
        if forward:
          _, lin = jax.linearize(f_hat, a * h)
          return jax.vmap(lambda e: lin(h * e))(eye)
        jac = jax.jacrev(f_hat)(a * h)                          # [T_out, k_out, T_in, k_in]
        return jnp.einsum("tisj,sj->jti", jac, h)
      a_all = jax.vmap(a_at)(al)                                # [n_alpha, k_in, T_out, k_out]
      if functional:
        diff = f_hat(h)[None] - jax.vmap(lambda a: f_hat(a * h))(al)
        return 2 * jnp.einsum("a,ati,ajti->ij", wt, diff, a_all)
      abar = jnp.tensordot(wt, a_all, 1)
      if n_src:
        phi = jax.random.rademacher(key, (n_src, t_out), h.dtype) / math.sqrt(n_src)
        abar = jnp.einsum("rt,jti->jri", phi, abar)
      return jnp.einsum("jti->ij", abar ** 2)

    e = jax.vmap(per_sample)(fh, keys)
    return jnp.einsum("b,bij->ij", w, e)

  args = (params, *(jnp.asarray(a, dtype) for a in (basis_in.C, basis_in.C_pinv, basis_out.C,
                                                    alphas, weights)))
  e = scan.dataset_sum(fn, args, x, cfg.chunk_size)
  return np.asarray(e, np.float64) / (jax.tree.leaves(x)[0].shape[0] * view.td[l][0])


def build_edges(seq, params, bases, x, cfg) -> list[np.ndarray]:
  validate(cfg)
  params, x = scan.cast(params, cfg.dtype), scan.cast(x, cfg.dtype)
  view = view_of(seq, params, jax.tree.map(lambda a: a[0], x))
  chex.assert_equal(len(bases), view.last + 1)
  return [edges(seq, params, view, l, bases[l], bases[l + 1], x, cfg)
          for l in range(view.last)]
