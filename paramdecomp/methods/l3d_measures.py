"""Measurements and interventions along L3D subnetworks (docs/methods/l3d.md §3.6).

`dec` is the decoder map of an L3D state (`l3d.State.dec`, {path: Tucker}); its rows v_k are the
subnetworks. Interventions evaluate the target at W0 + delta v_k with the decomposed tensors
replaced; `paths` restricts a perturbation to some tensors (e.g. only the hidden layers, to rule
out bias-only solutions). Signs of v_k are arbitrary: look at both signs of delta.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from paramdecomp.methods import l3d
from paramdecomp.core import pytree
from paramdecomp.core.grads import directional_derivatives


def _moved(params, dec_blocks: dict, step: dict) -> dict:
  """params with each decomposed tensor p moved by step[p] (a tensor of its shape)."""
  ws = pytree.get(params, list(dec_blocks))
  return pytree.replace(params, {p: ws[p] + step[p] for p in step})


def _restrict(dec_blocks: dict, paths: Sequence[str] | None) -> dict:
  if paths is None:
    return dec_blocks
  unknown = set(paths) - set(dec_blocks)
  if unknown:
    raise ValueError(f"paths {sorted(unknown)} are not decomposed; they are {list(dec_blocks)}")
  return {p: b for p, b in dec_blocks.items() if p in paths}


def impact(apply: Callable, params, enc: dict, x: jax.Array, key, cfg,
           n_refs: int = 10) -> jax.Array:
  """[B, n_v] impact I(x_i, v_k) = mean over `n_refs` drawn references y_j of
  |<V_in_k, grad_W D(f(x_i, W), y_j)>| (= |c_ik|)."""
  y0 = jax.lax.stop_gradient(apply(params, x))
  tang = l3d.blocks(enc)

  def one(k):
    y_ref = l3d.references(k, y0, cfg.reference, cfg.sequence)
    return jnp.abs(l3d.directional(apply, params, x, y0, y_ref, tang, cfg))

  return jnp.mean(jax.lax.map(one, jax.random.split(key, n_refs)), axis=0)


def top_samples(impacts: jax.Array, n: int) -> jax.Array:
  """[n_v, n] indices of the n samples of largest impact per subnetwork (impacts: [B, n_v])."""
  return jax.lax.top_k(impacts.T, n)[1]


def output_derivatives(apply: Callable, params, dec: dict, x: jax.Array,
                       paths: Sequence[str] | None = None) -> jax.Array:
  """[n_v, B, ...] d/d delta f(x, W0 + delta v_k) at delta = 0 (one `jvp` per subnetwork)."""
  tang = _restrict(l3d.blocks(dec), paths)
  ws = pytree.get(params, list(tang))
  _, d = directional_derivatives(lambda w: apply(pytree.replace(params, w), x), ws, tang)
  return d


def most_affected_outputs(apply: Callable, params, dec: dict, x: jax.Array,
                          top: int = 5) -> jax.Array:
  """[n_v, B, top] indices (over the flattened output of a sample) of the outputs that move most
  along each subnetwork: argmax_o |d f_o(x, W0 + delta v_k) / d delta|."""
  d = output_derivatives(apply, params, dec, x)
  d = jnp.abs(d.reshape(d.shape[:2] + (-1,)))
  return jax.lax.top_k(d, top)[1]


def perturb(apply: Callable, params, dec: dict, x: jax.Array, deltas: jax.Array,
            paths: Sequence[str] | None = None) -> jax.Array:
  """[D, n_v, B, ...] outputs f(x, W0 + delta v_k) over the grid `deltas` [D] and every k;
  with `paths`, only those tensors of v_k are applied."""
  bl = _restrict(l3d.blocks(dec), paths)

  def at(delta, k):
    return apply(_moved(params, bl, {p: delta * b[k] for p, b in bl.items()}), x)

  n_v = next(iter(bl.values())).shape[0]
  return jax.vmap(lambda d: jax.vmap(lambda k: at(d, k))(jnp.arange(n_v)))(deltas)


def perturb_pair(apply: Callable, params, dec: dict, x: jax.Array, k1: int, k2: int,
                 deltas1: jax.Array, deltas2: jax.Array,
                 paths: Sequence[str] | None = None) -> jax.Array:
  """[D1, D2, B, ...] outputs f(x, W0 + d1 v_k1 + d2 v_k2) over the two grids."""
  bl = _restrict(l3d.blocks(dec), paths)

  def at(d1, d2):
    return apply(_moved(params, bl, {p: d1 * b[k1] + d2 * b[k2] for p, b in bl.items()}), x)

  return jax.vmap(lambda a: jax.vmap(lambda b: at(a, b))(deltas2))(deltas1)


def output_change(apply: Callable, params, dec: dict, x: jax.Array, delta: float,
                  paths: Sequence[str] | None = None) -> jax.Array:
  """[n_v, B] mean absolute output change per sample, averaged over +delta and -delta."""
  base = apply(params, x)
  moved = perturb(apply, params, dec, x, jnp.array([delta, -delta]), paths)  # [2, K, B, ...]
  diff = jnp.abs(moved - base[None, None])
  return jnp.mean(diff.reshape(diff.shape[:3] + (-1,)), axis=(0, 3))


def specificity(change: jax.Array, uses: jax.Array) -> jax.Array:
  """[n_v] mean output change of the samples that use subnetwork k's feature divided by that of
  the samples that do not. change: [n_v, B] (`output_change`); uses: [B, n_v] bool."""
  u = uses.T.astype(change.dtype)
  on = jnp.sum(change * u, axis=1) / jnp.maximum(jnp.sum(u, axis=1), 1)
  off = jnp.sum(change * (1 - u), axis=1) / jnp.maximum(jnp.sum(1 - u, axis=1), 1)
  return on / (off + 1e-12)


def feature_of_subnet(impacts: jax.Array, x: jax.Array) -> jax.Array:
  """[n_v] the input feature each subnetwork serves: argmax_j of its mean impact over the
  samples with x_j != 0 (impacts: [B, n_v], x: [B, n_features])."""
  act = (x != 0).astype(impacts.dtype)                                # [B, F]
  mean = (impacts.T @ act) / jnp.maximum(jnp.sum(act, axis=0), 1)   # [K, F]
  return jnp.argmax(mean, axis=1)


def stacked_gradients(apply: Callable, params, paths: Sequence[str], x: jax.Array, key, cfg,
                      batch_size: int) -> tuple[jax.Array, jax.Array]:
  """(G [N', n_w], x[:N']): per-sample divergence gradients of x [N, ...] with references drawn
  per batch of `batch_size` as in training (a remainder dropped), stacked in sorted path order.
  Materialises G: for small (toy) models only."""
  nb = x.shape[0] // batch_size
  keys = jax.random.split(key, nb)
  gs = []
  for i in range(nb):
    xb = x[i * batch_size:(i + 1) * batch_size]
    y0 = jax.lax.stop_gradient(apply(params, xb))
    y_ref = l3d.references(keys[i], y0, cfg.reference, cfg.sequence)
    gs.append(l3d.flat_batch(l3d.gradients(apply, params, xb, y0, y_ref, list(paths), cfg)))
  return jnp.concatenate(gs), x[:nb * batch_size]


def reconstruction_bound(apply: Callable, params, paths: Sequence[str], x: jax.Array, key, cfg,
                         batch_size: int, ranks: Sequence[int]) -> list[float]:
  """Lower bounds on the pooled reconstruction loss of any r subnetworks, for r in `ranks`.

  The bound for r is the share of ||G||_F^2 (`stacked_gradients`) outside G's top-r singular
  directions: r unit decoder rows with the best coefficients and no top-k or Tucker constraint
  cannot do better (pooled over all of x rather than per batch). It says whether a
  reconstruction target is reachable at all for a given object (§3.1) and data.
  """
  g, _ = stacked_gradients(apply, params, paths, x, key, cfg, batch_size)
  return energy_outside_top(g, ranks)


def energy_outside_top(g: jax.Array, ranks: Sequence[int]) -> list[float]:
  """Share of ||g||_F^2 (g: [N, n_w]) outside its top-r right singular directions, per r."""
  s2 = jnp.linalg.svd(g, compute_uv=False) ** 2
  tot = jnp.sum(s2) + l3d.LOSS_EPS
  return [float(jnp.sum(s2[r:]) / tot) for r in ranks]


def private_share(g: jax.Array, x: jax.Array) -> jax.Array:
  """[n_features] share of the gradient energy of the samples with only x_j active that lies on
  parameters no sample without x_j moves (g [N, n_w], x [N, n_features]): the part of feature
  j's gradients that a perturbation can change without touching the other samples."""
  act = x != 0
  out = []
  for j in range(x.shape[1]):
    only = (act[:, j] & (jnp.sum(act, axis=1) == 1))[:, None]
    others = jnp.max(jnp.abs(jnp.where(act[:, j:j + 1], 0.0, g)), axis=0)        # [n_w]
    scale = jnp.max(jnp.abs(g))
    private = others <= 1e-6 * scale
    e = jnp.where(only, g, 0.0) ** 2
    out.append(jnp.sum(e * private) / (jnp.sum(e) + l3d.LOSS_EPS))
  return jnp.stack(out)


def feature_directions(g: jax.Array, x: jax.Array, like: dict) -> dict[str, jax.Array]:
  """The best one direction per input feature: for feature j, the top right singular vector of
  the gradients g [N, n_w] of the samples with only x_j active (x: [N, n_features]), as a dense
  decoder map {path: Tucker} shaped like `like` ({path: [n_v, *shape]} blocks, e.g.
  `l3d.blocks(dec)`). A subnetwork that traces feature j alone can at best be this direction, so
  its `specificity` bounds what a one-feature-per-subnetwork L3D solution shows."""
  act = x != 0
  rows = []
  for j in range(x.shape[1]):
    only = act[:, j] & (jnp.sum(act, axis=1) == 1)
    v = jnp.linalg.svd(jnp.where(only[:, None], g, 0.0), full_matrices=False)[2][0]
    rows.append(v)
  v = jnp.stack(rows)                                               # [F, n_w]
  out, i = {}, 0
  for p in sorted(like):  # g's columns: per-sample gradient dicts come out of jax key-sorted
    shape = like[p].shape[1:]
    n = math.prod(shape)
    blk = v[:, i:i + n].reshape((v.shape[0],) + shape)
    eye = tuple(jnp.broadcast_to(jnp.eye(d, dtype=blk.dtype), (v.shape[0], d, d)) for d in shape)
    out[p] = l3d.Tucker(blk, eye)                                   # full-rank Tucker = blk
    i += n
  return out
