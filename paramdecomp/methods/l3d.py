"""L3D: local loss landscape decomposition (docs/methods/l3d.md §3).

Per-sample divergence gradients g_i = grad_W D(f(x_i, W), y_r) at the target W0 (all decomposed
tensors, biases included) are reconstructed from n_v subnetworks: an encoder V_in gives the
coefficients c_ik = <V_in_k, g_i>, a fractional batch top-k keeps the largest |c|, and the
decoder rows v_k (the subnetworks, unit norm) rebuild g_hat_i = sum_k c~_ik v_k. Both maps are
stored per tensor in Tucker form. Two paths give the same coefficients and loss: `explicit`
(per-sample gradients, chunked `vmap(grad)`) and `forward` (`jvp`s along the 2 n_v directions
plus per-sample gradient norms, never holding a batch x parameters array).

The method surface (the same for every method):

    default_config()                         the hyperparameters
    validate(cfg)                            raises ConfigError on a bad cfg
    init(key, params, cfg) -> State          validates cfg; decoder normalised, encoder = decoder
    loss(state, params, x, key, *, apply, cfg) -> (value, metrics)
    make_update(apply, cfg, batch_fn, optimizer)
                                             the one training step ``(TrainState, frozen) ->
                                             (TrainState, metrics)``, decoder normalisation
                                             included; with a fixed data set the frozen argument
                                             is ``train.Frozen(params, data)`` and batch_fn is
                                             ``(key, data) -> x``. A warm start (another top-k) is
                                             another cfg given to make_update for its steps.
    normalize(state, cfg) -> State           the decoder at unit norm (cfg.decoder_norm)

`State` holds ``enc`` and ``dec``, each ``{path: Tucker}`` leading with the n_v axis
(`COMPONENT_TYPES`).
"""
from __future__ import annotations

import math
import string
import warnings
from typing import Callable, NamedTuple

import chex
import jax
import jax.extend.core
import jax.numpy as jnp
import ml_collections

from paramdecomp.core import config as cfglib
from paramdecomp.core.inputs import check_batched
from paramdecomp.core import pytree, sparsity, train
from paramdecomp.core.grads import (directional_derivatives, per_sample_grad_sq_norms,
                               per_sample_grads)

DIVERGENCES = ("mse", "kl")
# the reference output y_r of §3.1 (docs/methods/l3d.md §3.1.1): 'constant' is 'zero' by its old name
REFERENCES = ("batch", "mean", "zero", "constant", "uniform")
PATHS = ("auto", "explicit", "forward")
DECODER_NORMS = ("l2", "reference")
LOSS_EPS = 1e-10
# `auto`'s rule (choose_path), fitted to BENCHMARKS.md's L3D table (36 cases: TM1, TM4 widths 5
# and 100, a linen MLP 64-100-100-10, a linen CNN, a 4-head attention block; B 32/256/1024; n_v
# 5/20; one pinned core). Costs per step: explicit ~ B n_w (a + b n_v) flops but holds ~3 B x n_w
# arrays, so past the caches it turns memory-bound (5-10x slower per entry at B n_w ~ 4M);
# forward ~ B F (c + d n_v) with F the forward multiply-adds per sample (2 n_v jvps and their
# transposes, each a pass over the batch) and never holds B x n_w. So with little weight reuse
# (F / n_w ~ 1: dense layers) the forward path wins once B n_w is past a cache-sized threshold
# that grows with n_v (measured crossings: n_v 5 between 154k and 563k, n_v 20 above 1.0M and
# below 4.5M), while with weight reuse (convolutions, attention over T positions: F / n_w ~ 8)
# its jvps cost F / n_w times more and the explicit path won by 3-57x in every measured case.
AUTO_DENSE_PER_SUBNET = 1 << 16  # dense targets: explicit while B n_w <= this x n_v
AUTO_REUSE = 1.5                 # F / n_w at or above which explicit won at every measured size
# explicit never above this many B x n_w entries (32 MiB per float32 array, ~100 MiB of step
# temporaries): the memory cap, whatever the speed
AUTO_EXPLICIT_MAX = 1 << 23
# the forward path's loss is exact to about this many eps of its dtype (relative to 1): rounding
# of its expanded squared error, measured on exact solutions in float32 (tests/methods/test_l3d.py)
FORWARD_FLOOR_EPS = 4
# the forward path's gradient norms hold at most this many per-sample gradient entries at once
CHUNK_MAX_GRAD_ENTRIES = 1 << 22


class Tucker(NamedTuple):
  """n_v Tucker blocks of one tensor of shape (I_1..I_T): block_k = core_k x_1 U1_k ... x_T UT_k.

  core: [n_v, R_1, ..., R_T]; factors[t]: [n_v, R_t, I_t].
  """
  core: jax.Array
  factors: tuple


COMPONENT_TYPES = (Tucker,)  # what `sharding.shard_state` splits over the components axis
Subnets = dict[str, Tucker]  # one map: {path: the n_v Tucker blocks of that tensor}


class State(NamedTuple):
  """L3D's trainable state: the encoder map V_in (gives the coefficients) and the decoder map
  (its rows v_k are the subnetworks), over the same tensors in the same order."""
  enc: Subnets
  dec: Subnets


def default_config() -> ml_collections.ConfigDict:
  """L3D hyperparameters (§3.4); TM1 values as defaults."""
  return ml_collections.ConfigDict(dict(
      decompose=(".*",),     # path patterns of the tensors to decompose (biases included)
      n_subnets=5,           # n_v
      rank=1,                # Tucker rank of every mode of every tensor (clipped to the mode size)
      topk=0.1,              # fraction of the B x n_v coefficients kept by batch top-k
      divergence="mse",      # mse (squared-error surrogate) | kl (softmax outputs, last axis)
      reference="zero",      # zero (alias constant): all zeros, the uniform distribution for kl |
                             # mean: the batch-mean output | uniform: logits log(1/n_o) |
                             # batch: another sample's output, with replacement (the paper's text)
      sequence=False,        # outputs [B, T, ...]: references drawn over batch x position
      decoder_norm="l2",     # l2 (global, unit v_k) | reference (sqrt of summed tensor norms)
      path="auto",           # auto | explicit | forward
      chunk_size=0,          # per-sample gradients this many samples at a time (0: whole batch)
  ))


def validate(cfg: ml_collections.ConfigDict) -> None:
  cfglib.check_fields(cfg, default_config())
  cfglib.one_of(cfg, "divergence", DIVERGENCES)
  cfglib.one_of(cfg, "reference", REFERENCES)
  cfglib.one_of(cfg, "path", PATHS)
  cfglib.one_of(cfg, "decoder_norm", DECODER_NORMS)
  cfglib.positive(cfg, "n_subnets", "rank", "topk")
  cfglib.require(cfg.topk <= 1, "topk", f"is a fraction of the coefficients, got {cfg.topk}")
  cfglib.require(isinstance(cfg.n_subnets, int), "n_subnets", "must be an integer")
  cfglib.require(isinstance(cfg.rank, int), "rank", "must be an integer")
  cfglib.require(cfg.chunk_size >= 0, "chunk_size", f"must be >= 0, got {cfg.chunk_size}")
  cfglib.require(len(cfg.decompose) > 0, "decompose", "names no tensors")


# ----------------------------------------------------------------------------------- Tucker blocks

def _letters(n: int, skip: str = "") -> str:
  return "".join(c for c in string.ascii_letters if c not in skip)[:n]


def blocks_of(t: Tucker) -> jax.Array:
  """[n_v, I_1, ..., I_T] dense blocks (mode products of the core with every factor)."""
  order = len(t.factors)
  r, i = _letters(order, "k"), _letters(2 * order, "k")[order:]
  spec = f"k{r}," + ",".join(f"k{r[j]}{i[j]}" for j in range(order)) + f"->k{i}"
  return jnp.einsum(spec, t.core, *t.factors)


def init_tucker(key, shape, n_v: int, rank: int, dtype=jnp.float32) -> Tucker:
  """Core and factors ~ N(0, 1) / n_v (the reference init), ranks clipped to the mode sizes."""
  if len(shape) == 0:
    raise ValueError("L3D decomposes tensors of order >= 1; reshape scalars to (1,)")
  ranks = tuple(min(rank, d) for d in shape)
  ks = jax.random.split(key, len(shape) + 1)
  core = jax.random.normal(ks[0], (n_v,) + ranks, dtype) / n_v
  factors = tuple(jax.random.normal(ks[t + 1], (n_v, ranks[t], d), dtype) / n_v
                  for t, d in enumerate(shape))
  return Tucker(core, factors)


def blocks(subnets: dict[str, Tucker]) -> dict[str, jax.Array]:
  """{path: [n_v, *shape]} dense blocks of every tensor."""
  return {p: blocks_of(t) for p, t in subnets.items()}


def flat(blocks_: dict[str, jax.Array]) -> jax.Array:
  """[n_v, n_w] concatenation of the blocks (in path order)."""
  return jnp.concatenate([b.reshape(b.shape[0], -1) for b in blocks_.values()], axis=1)


def flat_batch(tree: dict[str, jax.Array]) -> jax.Array:
  """[B, n_w] per-sample tensors {path: [B, *shape]} flattened and concatenated (path order)."""
  return jnp.concatenate([g.reshape(g.shape[0], -1) for g in tree.values()], axis=1)


def subnet_norms(subnets: dict[str, Tucker], kind: str = "l2") -> jax.Array:
  """[n_v] norm of each subnetwork: global L2, or the reference code's sqrt(sum_t ||v_k,t||)."""
  per = jnp.stack([jnp.sqrt(jnp.sum(b.reshape(b.shape[0], -1) ** 2, axis=1))
                   for b in blocks(subnets).values()])       # [n_tensors, n_v]
  if kind == "l2":
    return jnp.sqrt(jnp.sum(per**2, axis=0))
  if kind == "reference":
    return jnp.sqrt(jnp.sum(per, axis=0))
  raise ValueError(f"unknown decoder norm {kind!r}; use one of {DECODER_NORMS}")


def normalize_subnets(subnets: Subnets, kind: str = "l2", eps: float = 1e-12) -> Subnets:
  """Each subnetwork divided by its norm, the factor spread equally over core and factors."""
  n = jnp.maximum(subnet_norms(subnets, kind), eps)

  def scale(t: Tucker) -> Tucker:
    s = n ** (-1.0 / (len(t.factors) + 1))
    bc = lambda a: a * s.reshape((-1,) + (1,) * (a.ndim - 1)).astype(a.dtype)
    return Tucker(bc(t.core), tuple(bc(u) for u in t.factors))

  return {p: scale(t) for p, t in subnets.items()}


def normalize(state: State, cfg) -> State:
  """The decoder's subnetworks at unit `cfg.decoder_norm` (the encoder is never normalised)."""
  return State(state.enc, normalize_subnets(state.dec, cfg.decoder_norm))


def init(key, params, cfg, *, apply: Callable | None = None, x=None) -> State:
  """Tucker maps for the tensors of `params` matched by cfg.decompose, after checking cfg: the
  decoder normalised, the encoder an exact copy of it (§3.2). `apply` and `x` (the method
  surface's model arguments) are not needed: L3D decomposes every tensor in its own shape."""
  del apply, x
  validate(cfg)
  ws = pytree.get(params, pytree.select(params, cfg.decompose))
  dec = {p: init_tucker(jax.random.fold_in(key, i), w.shape, cfg.n_subnets, cfg.rank, w.dtype)
         for i, (p, w) in enumerate(ws.items())}
  dec = normalize_subnets(dec, cfg.decoder_norm)
  return State(jax.tree.map(jnp.copy, dec), dec)  # own buffers: states are donated


def check_subnets(params, state: State) -> None:
  """Raise a clear error when the maps do not fit the tensors they decompose."""
  if list(state.enc) != list(state.dec):
    raise ValueError("encoder and decoder decompose different tensors: "
                     f"{list(state.enc)} vs {list(state.dec)}")
  ws = pytree.get(params, list(state.dec))
  nv = set()
  for side, subnets in zip(State._fields, state):
    for p, t in subnets.items():
      shape = tuple(u.shape[-1] for u in t.factors)
      if shape != ws[p].shape:
        raise ValueError(f"{side} map of {p!r} has block shape {shape}, the tensor {ws[p].shape}")
      nv.add(t.core.shape[0])
  if len(nv) != 1:
    raise ValueError(f"all maps need the same number of subnetworks, got {sorted(nv)}")


# ------------------------------------------------------------------------ divergences, references

def divergence(y: jax.Array, y0: jax.Array, y_ref: jax.Array, kind: str = "mse") -> jax.Array:
  """Per-sample scalar D whose W-gradient at W0 is the divergence gradient (§3.1).

  y: the live output f(x, W) of one sample; y0 = f(x, W0) and y_ref are constants. 'mse' is the
  surrogate mean_o y_o * sg[y0_o - y_ref_o] (gradient of ||f - y_ref||^2 / (2 n_o) at W0); 'kl'
  is KL(softmax(y_ref) || softmax(y)) over the last axis, averaged over any other (position) axes.
  """
  chex.assert_equal_shape((y, y0, y_ref))
  if kind == "mse":
    return jnp.mean(y * jax.lax.stop_gradient(y0 - y_ref))
  if kind == "kl":
    p_ref = jax.nn.softmax(jax.lax.stop_gradient(y_ref), axis=-1)
    kl = jnp.sum(p_ref * (jnp.log(p_ref + 1e-30) - jax.nn.log_softmax(y, axis=-1)), axis=-1)
    return jnp.mean(kl)
  raise ValueError(f"unknown divergence {kind!r}; use one of {DIVERGENCES}")


def references(key, y0: jax.Array, mode: str = "zero", sequence: bool = False) -> jax.Array:
  """[B, ...] stop-gradient reference outputs for the outputs y0 [B, ...] of a batch.

  'zero' (alias 'constant'): zeros, the constant output of §3.1's first candidate (for 'kl' the
  uniform distribution); 'uniform': constant logits log(1/n_o) over the last axis (the same
  distribution as 'zero' under 'kl'; the authors' CNN passes it); 'mean': the batch-mean output
  (over positions too with `sequence`); 'batch': each sample (or, with `sequence`, each
  (sample, position) of y0 [B, T, ...]) gets the output of one drawn uniformly with replacement
  from the batch (possibly itself), as the paper's text describes.

  The default is 'zero' because it is what the authors' code passes for TM2, TM3 and the
  transformer, and (as uniform logits) the CNN; their TMS (TM1) and squares (TM4) scripts pass
  the batch mean, which those toys' configs set (docs/methods/l3d.md §3.1.1).
  """
  y0 = jax.lax.stop_gradient(y0)
  lead = 2 if sequence else 1
  if sequence and y0.ndim < 3:
    raise ValueError(f"sequence references need outputs [B, T, n_o], got shape {y0.shape}")
  n = y0.shape[:lead]
  pool = y0.reshape((-1,) + y0.shape[lead:])
  if mode == "mean":
    return jnp.broadcast_to(jnp.mean(pool, axis=0), y0.shape)
  if mode in ("zero", "constant"):
    return jnp.zeros_like(y0)
  if mode == "uniform":
    return jnp.full_like(y0, -jnp.log(y0.shape[-1]))
  if mode == "batch":
    idx = jax.random.randint(key, n, 0, pool.shape[0])
    return pool[idx]
  raise ValueError(f"unknown reference {mode!r}; use one of {REFERENCES}")


# ----------------------------------------------------------------------------------- the two paths

def _sample_fn(apply, params, kind):
  def fn(ws, x, y0, y_ref):
    y = apply(pytree.replace(params, ws), x[None])[0]
    return divergence(y, y0, y_ref, kind)
  return fn


def gradients(apply, params, x, y0, y_ref, paths, cfg) -> dict[str, jax.Array]:
  """{path: [B, *shape]} per-sample divergence gradients g_i (the explicit path's input)."""
  ws = pytree.get(params, paths)
  chunk = cfg.chunk_size or None
  return per_sample_grads(_sample_fn(apply, params, cfg.divergence), ws, x, y0, y_ref,
                          chunk_size=chunk)


def grad_sq_norms(apply, params, x, y0, y_ref, paths, cfg) -> jax.Array:
  """[B] ||g_i||^2, in chunks (default: the largest divisor of B keeping a chunk's gradients
  below CHUNK_MAX_GRAD_ENTRIES), so no batch x parameters array is ever formed."""
  ws = pytree.get(params, paths)
  chunk = cfg.chunk_size or _default_chunk(x.shape[0], sum(w.size for w in ws.values()))
  return jax.lax.stop_gradient(per_sample_grad_sq_norms(
      _sample_fn(apply, params, cfg.divergence), ws, x, y0, y_ref, chunk_size=chunk))


def _default_chunk(b: int, n_w: int) -> int:
  cap = max(1, CHUNK_MAX_GRAD_ENTRIES // max(n_w, 1))
  return max(d for d in range(1, min(b, cap) + 1) if b % d == 0)


def choose_path(cfg, batch_size: int, n_w: int, n_v: int = 5, reuse: float = 1.0) -> str:
  """cfg.path, or for 'auto': 'explicit' while B n_w <= AUTO_EXPLICIT_MAX and either the target
  reuses its weights (`reuse` = forward multiply-adds per sample / n_w >= AUTO_REUSE) or
  B n_w <= AUTO_DENSE_PER_SUBNET x n_v; else 'forward' (reasoning next to the constants)."""
  if cfg.path != "auto":
    return cfg.path
  entries = batch_size * n_w
  if entries > AUTO_EXPLICIT_MAX:
    return "forward"
  return "explicit" if reuse >= AUTO_REUSE or entries <= AUTO_DENSE_PER_SUBNET * n_v else "forward"


_MAC_PRIMS = ("dot_general", "conv_general_dilated")


def forward_macs(apply, params, x) -> int:
  """Multiply-adds of the products (dot_general, convolutions) in apply(params, x[:1]): one
  sample's forward cost, counted on its jaxpr at trace time (nothing is compiled)."""
  spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
  jaxpr = jax.make_jaxpr(apply)(jax.tree.map(spec, params), spec(x[:1]))
  return _macs(jaxpr.jaxpr)


def _macs(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name in _MAC_PRIMS:
      out = eqn.outvars[0].aval.shape
      if name == "dot_general":
        (lhs_c, _), _ = eqn.params["dimension_numbers"]
        inner = math.prod(eqn.invars[0].aval.shape[d] for d in lhs_c)
      else:  # each output: kernel spatial size x input features per group
        dn = eqn.params["dimension_numbers"]
        k = eqn.invars[1].aval.shape
        inner = math.prod(k) // k[dn.rhs_spec[0]]
      total += math.prod(out) * inner
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      n = eqn.params.get("length", 1) if name == "scan" else 1
      total += n * _macs(sub)
  return total


def directional(apply, params, x, y0, y_ref, tangents: dict[str, jax.Array], cfg) -> jax.Array:
  """[B, K] <tangent_k, g_i> as forward-mode derivatives of the per-sample divergences."""
  paths = list(tangents)

  def fn(ws):
    y = apply(pytree.replace(params, ws), x)
    return jax.vmap(lambda a, b, c: divergence(a, b, c, cfg.divergence))(y, y0, y_ref)

  _, d = directional_derivatives(fn, pytree.get(params, paths), tangents)
  return d.T


def coefficients(apply, params, enc: dict[str, Tucker], x, y0, y_ref, cfg,
                 path: str = "forward") -> jax.Array:
  """[B, n_v] c_ik = <V_in_k, g_i>, by `jvp` ('forward') or from explicit gradients."""
  if path == "forward":
    return directional(apply, params, x, y0, y_ref, blocks(enc), cfg)
  g = flat_batch(gradients(apply, params, x, y0, y_ref, list(enc), cfg))
  return g @ flat(blocks(enc)).T


def loss_from_outputs(state: State, params, x, y0, y_ref, *, apply: Callable, cfg,
                      path: str | None = None):
  """(normalised reconstruction loss, metrics) for given target outputs and references.

  L = sum_i ||g_i - g_hat_i||^2 / (sum_i ||g_i||^2 + 1e-10) (§3.3), by `path` ('explicit' or
  'forward'; default: `choose_path`). metrics['mask'] is the [B, n_v] top-k mask; 'err' and
  'total' the loss's numerator and denominator (to pool over several batches).

  Floor of the forward path: it expands ||g_i - g_hat_i||^2 = ||g_i||^2 - 2 c~_i.d_i +
  c~_i G c~_i (d = V_out g, G = V_out V_out^T), whose terms cancel as L -> 0, so its L is
  resolved only to about FORWARD_FLOOR_EPS x the dtype's eps (FORWARD_FLOOR_EPS x 1.2e-7 in
  float32, x 2.2e-16 in float64) relative to 1 (L's scale, sum_i ||g_i||^2 / total): each
  sample's error term is clamped at 0, so L >= 0, and a forward L below the floor means only
  "at most the floor". The explicit path forms g_i - g_hat_i and resolves L down to ~eps^2.
  """
  paths = list(state.dec)
  n_w = sum(w.size for w in pytree.get(params, paths).values())
  if path is None and cfg.path == "auto":
    reuse = forward_macs(apply, params, x) / n_w
    path = choose_path(cfg, x.shape[0], n_w, state.dec[paths[0]].core.shape[0], reuse)
  path = path or cfg.path
  enc_b, dec_b = blocks(state.enc), blocks(state.dec)
  v_out = flat(dec_b)                                           # [K, n_w]
  if path == "explicit":
    g = flat_batch(gradients(apply, params, x, y0, y_ref, paths, cfg))  # [B, n_w]
    c = g @ flat(enc_b).T
    mask = sparsity.fraction_topk_mask(jnp.abs(c), cfg.topk)
    g_hat = (c * mask) @ v_out
    err = jnp.sum((g - g_hat) ** 2)
    total = jnp.sum(g**2)
  elif path == "forward":
    k = v_out.shape[0]
    both = {p: jnp.concatenate([enc_b[p], dec_b[p]]) for p in paths}  # one linearisation
    cd = directional(apply, params, x, y0, y_ref, both, cfg)          # [B, 2K]
    c, d = cd[:, :k], cd[:, k:]
    mask = sparsity.fraction_topk_mask(jnp.abs(c), cfg.topk)
    ct = c * mask
    gsq = grad_sq_norms(apply, params, x, y0, y_ref, paths, cfg)
    gram = v_out @ v_out.T
    # ||g_i - g_hat_i||^2 expanded: three terms of size ~||g_i||^2 cancel near an exact solution,
    # leaving rounding of a few eps ||g_i||^2 of either sign; a squared norm is >= 0, so each
    # sample's is clamped there (its gradient is then 0, as the true one is at an exact solution)
    err_i = gsq - 2 * jnp.sum(ct * d, axis=1) + jnp.sum((ct @ gram) * ct, axis=1)
    err = jnp.sum(jnp.maximum(err_i, 0.0))
    total = jnp.sum(gsq)
  else:
    raise ValueError(f"unknown path {path!r}; use 'explicit' or 'forward'")
  loss = err / (total + LOSS_EPS)
  return loss, {"active": jnp.mean(jnp.sum(mask, axis=1)), "mask": mask, "coeffs": c,
                "err": err, "total": total}


def batch_loss(state: State, params, x: jax.Array, key, *, apply: Callable, cfg,
               path: str | None = None):
  """`loss_from_outputs` on batch x: the target's outputs, references drawn with `key`."""
  check_subnets(params, state)
  check_batched(apply, params, x)
  y0 = jax.lax.stop_gradient(apply(params, x))
  warn_sequence(y0.shape, cfg)
  y_ref = references(key, y0, cfg.reference, cfg.sequence)
  return loss_from_outputs(state, params, x, y0, y_ref, apply=apply, cfg=cfg, path=path)


def warn_sequence(shape, cfg) -> None:
  """Warn (at trace time, so once per compiled shape) when outputs [B, T, V] come without
  cfg.sequence: the reference of a sample is then another sample's whole [T, V] output."""
  if len(shape) >= 3 and not cfg.sequence and cfg.reference in ("batch", "mean"):
    warnings.warn(
        f"L3D: the target's outputs have shape {tuple(shape)} ([B, T, V]) but cfg.sequence is "
        f"False, so reference={cfg.reference!r} treats each sample's [T, V] output as one "
        "vector (another sample's whole sequence, or the batch mean of sequences); "
        "sequence=True draws the reference for each (sample, position) from all B x T outputs "
        "of the batch (the mean over positions too), as for a language model's tokens",
        stacklevel=3)


def loss(state: State, params, x: jax.Array, key, *, apply: Callable, cfg,
         path: str | None = None):
  """(loss, metrics) on batch x [B, ...] (`batch_loss`); metrics 'active' (mean kept
  coefficients per sample) and 'p_act' ([n_v] share of samples kept)."""
  value, m = batch_loss(state, params, x, key, apply=apply, cfg=cfg, path=path)
  # p_act [n_v]: the batch's share of samples on which each subnetwork survives top-k; its mean
  # over an epoch's steps is that epoch's P_act (§3.3)
  return value, {"active": m["active"], "p_act": jnp.mean(m["mask"], axis=0)}


def make_update(apply: Callable, cfg, batch_fn: Callable, optimizer):
  """The L3D step ``(TrainState, frozen) -> (TrainState, metrics)`` (not jitted): `loss` on
  ``x = batch_fn(key)``, or ``batch_fn(key, data)`` when frozen is a ``train.Frozen(params,
  data)`` (the fixed data set), the optimiser on both maps, then `normalize`. Checks cfg."""
  validate(cfg)
  loss_fn = train.loss_on_batches(loss, batch_fn, apply=apply, cfg=cfg)
  return train.make_update(loss_fn, optimizer, post_update=lambda s: normalize(s, cfg))


def p_act(apply, params, state: State, xs: jax.Array, key, cfg, batch_size: int) -> jax.Array:
  """[n_v] P_act: fraction of the samples of xs [N, ...] (in batches of `batch_size`, as in
  training; a remainder is dropped) on which each subnetwork survives top-k. 0 = dead."""
  nb = xs.shape[0] // batch_size
  xb = xs[:nb * batch_size].reshape((nb, batch_size) + xs.shape[1:])
  keys = jax.random.split(key, nb)

  def one(args):
    x, k = args
    _, m = batch_loss(state, params, x, k, apply=apply, cfg=cfg)
    return jnp.mean(m["mask"], axis=0)

  return jnp.mean(jax.lax.map(one, (xb, keys)), axis=0)
