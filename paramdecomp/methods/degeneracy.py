"""Degeneracy measures and the modularity metric of the interaction-basis paper (docs/methods/ib.md)

* activation degeneracy: null directions of a node's Gram matrix (`rank_deficiency` of
  `lib.node_moments`' Gram eigenvalues);
* Jacobian (gradient) degeneracy: null directions of K = E[Jᵀ J], J = ∂ output / ∂ node
  (`jacobian_gram`);
* synchronised nonlinearities: neurons that fire on the same data points (`firing_groups`);
* effective parameters: N - rank of the Gauss-Newton Hessian of the behavioural loss
  (`effective_parameters`);
* modularity: Leiden communities of the log-normalised interaction graph and Newman's Q
  (`graph_modularity`).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from paramdecomp.core import scan, sequential


def rank_deficiency(eigenvalues, tol: float, relative: bool = False) -> int:
  """Number of eigenvalues <= tol (times the largest with `relative`)."""
  ev = np.abs(np.asarray(eigenvalues, np.float64))
  thr = tol * ev.max() if relative and ev.size else tol
  return int((ev <= thr).sum())


def _jacobian_gram_chunk(seq, node, p, xb, w, i):
  def one(a):
    j = jax.jacrev(lambda v: sequential.forward_from(seq, p, v, node).ravel())(a)
    return j.reshape(j.shape[0], -1)
  js = jax.vmap(one)(sequential.activation(seq, p, xb, node))
  return jnp.einsum("b,boi,boj->ij", w, js, js)


def jacobian_gram(seq, params, x, node: int, chunk_size: int = 128) -> np.ndarray:
  """K = (1/N) Σ_x Jᵀ J [d, d] with J = ∂ f^L / ∂ f^node (node flattened to d) at every sample
  of x."""
  k = scan.dataset_sum(scan.bind(_jacobian_gram_chunk, seq, node), params, x, chunk_size)
  return np.asarray(k, np.float64) / jax.tree.leaves(x)[0].shape[0]


def firing_groups(pre: np.ndarray, hamming: int = 0) -> dict:
  """Groups of neurons with the same firing pattern 1[p > 0] over the data (pre: [N, d]).

  With hamming > 0 a neuron joins a group whose first member's pattern differs on at most that
  many points. Returns {groups (list of index lists, size >= 2), dead, always_on,
  extra_free: Σ_S (|S|² - |S|) over live, not-always-on groups}.
  """
  fire = np.asarray(pre) > 0
  n, d = fire.shape
  dead = [i for i in range(d) if not fire[:, i].any()]
  on = [i for i in range(d) if fire[:, i].all()]
  reps, groups = [], []
  for i in range(d):
    if i in dead or i in on:
      continue
    for g, r in zip(groups, reps):
      if int((fire[:, i] != fire[:, r]).sum()) <= hamming:
        g.append(i)
        break
    else:
      reps.append(i)
      groups.append([i])
  groups = [g for g in groups if len(g) > 1]
  return {"groups": groups, "dead": dead, "always_on": on,
          "extra_free": int(sum(len(g) ** 2 - len(g) for g in groups))}


def gauss_newton_hessian(apply: Callable, params, x) -> np.ndarray:
  """H = (2/n) Σ_x J_θᵀ J_θ of the behavioural MSE loss at θ* (§4.1), θ flattened."""
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  jac = jax.jacrev(lambda th: apply(unravel(th), x).reshape(x.shape[0], -1))(flat)  # [n, o, P]
  jac = np.asarray(jac, np.float64).reshape(-1, flat.size)
  return 2.0 / x.shape[0] * jac.T @ jac


def effective_parameters(apply: Callable, params, x, eps: float = 1e-6) -> dict:
  """N, rank_eps(H) (eigenvalues > eps·max) and N_free = N - rank for the behavioural loss."""
  h = gauss_newton_hessian(apply, params, x)
  ev = np.linalg.eigvalsh(h)
  rank = int((ev > eps * ev.max()).sum())
  return {"n_params": int(h.shape[0]), "rank": rank, "n_free": int(h.shape[0] - rank),
          "eigenvalues": ev[::-1]}


def edge_graph_weights(edges: list, skip_const: list, eps=None):
  """Undirected weighted graph over all non-constant features: w = max(0, log10(E / eps)) (§4.4).

  eps: one value, or one per edge set (e.g. the weakest edge that the edge-ablation bisection
  keeps); default the smallest positive edge. Returns (weights [n, n] symmetric, layer of each
  node)."""
  sizes = [e.shape[1] for e in edges] + [edges[-1].shape[0]]
  keep = [s - c for s, c in zip(sizes, skip_const)]
  offs = np.r_[0, np.cumsum(keep)]
  w = np.zeros((offs[-1], offs[-1]))
  pos = np.concatenate([np.asarray(e, np.float64)[skip_const[l + 1]:, skip_const[l]:].ravel()
                        for l, e in enumerate(edges)])
  pos = pos[pos > 0]
  if eps is None:
    eps = pos.min() if pos.size else 1.0
  eps = list(eps) if np.ndim(eps) else [eps] * len(edges)
  for l, e in enumerate(edges):
    sub = np.asarray(e, np.float64)[skip_const[l + 1]:, skip_const[l]:]
    lw = np.maximum(0.0, np.log10(np.maximum(sub, 1e-300) / max(eps[l], 1e-300)))
    w[offs[l + 1]:offs[l + 2], offs[l]:offs[l + 1]] = lw
  w = w + w.T
  layer = np.concatenate([np.full(k, l) for l, k in enumerate(keep)])
  return w, layer


def leiden_modularity(w: np.ndarray, resolution: float = 1.0, n_iterations: int = 10,
                      seed: int = 0) -> dict:
  """Leiden communities (leidenalg, RBConfiguration at `resolution`) of the weighted graph w and
  the Newman modularity Q of that partition at the same resolution."""
  import igraph as ig
  import leidenalg
  iu = np.triu_indices_from(w, 1)
  sel = w[iu] > 0
  g = ig.Graph(n=w.shape[0], edges=list(zip(iu[0][sel], iu[1][sel])))
  g.es["weight"] = list(w[iu][sel])
  part = leidenalg.find_partition(g, leidenalg.RBConfigurationVertexPartition, weights="weight",
                                  resolution_parameter=resolution, n_iterations=n_iterations,
                                  seed=seed)
  labels = np.asarray(part.membership)
  return {"labels": labels, "n_clusters": int(labels.max() + 1) if labels.size else 0,
          "Q": newman_q(w, labels, resolution)}


def newman_q(w: np.ndarray, labels: np.ndarray, resolution: float = 1.0) -> float:
  """Q = 1/(2m) Σ_ij [w_ij - γ k_i k_j / 2m] 1[c_i = c_j] for a symmetric weight matrix w."""
  k = w.sum(1)
  two_m = k.sum()
  if two_m <= 0:
    return 0.0
  same = labels[:, None] == labels[None, :]
  return float(((w - resolution * np.outer(k, k) / two_m) * same).sum() / two_m)


def graph_modularity(edges: list, skip_const: list, resolution: float = 1.0,
                     n_iterations: int = 10, seed: int = 0, eps=None) -> dict:
  """Modularity of an interaction graph (§4.4): cluster count, Q and cluster sizes."""
  w, _ = edge_graph_weights(edges, skip_const, eps)
  res = leiden_modularity(w, resolution, n_iterations, seed)
  sizes = np.bincount(res["labels"]) if res["labels"].size else np.zeros(0, int)
  return {"n_clusters": res["n_clusters"], "n_clusters_nontrivial": int((sizes > 1).sum()),
          "Q": res["Q"], "cluster_sizes": sorted((int(s) for s in sizes), reverse=True)[:20]}
