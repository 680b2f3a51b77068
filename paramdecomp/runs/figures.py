"""Figures of the papers, drawn with matplotlib (Agg) into PNG files."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def tms_arrows(target: np.ndarray, comps: np.ndarray, path: str, title: str = "") -> str:
  """TMS 5-2 figure: columns of W, of sum_c P_c, and of each P_c as 2-d arrows.

  target: [2, n]; comps: [C, 2, n]. Feature j has the same colour in every panel.
  """
  target, comps = np.asarray(target), np.asarray(comps)
  if target.shape[0] != 2:
    raise ValueError(f"arrow plots need a 2-d hidden space, got W of shape {target.shape}")
  panels = [("target W", target), ("sum of components", comps.sum(0))]
  panels += [(f"component {c}", comps[c]) for c in range(comps.shape[0])]
  colors = plt.cm.tab10(np.arange(target.shape[1]) % 10)
  lim = 1.15 * max(np.abs(target).max(), np.abs(comps).max(), 1e-6)
  fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.6))
  for ax, (name, mat) in zip(axes, panels):
    for j in range(mat.shape[1]):
      ax.annotate("", xy=mat[:, j], xytext=(0, 0),
                  arrowprops=dict(arrowstyle="->", color=colors[j], lw=1.8))
    ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim)
    ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(name, fontsize=9)
  return _save(fig, path, title)


def _save(fig, path: str, title: str = "") -> str:
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def ablation_curves(curves: dict, path: str, key: str = "accuracy", title: str = "",
                    threshold: float | None = None) -> str:
  """Score vs number of kept directions, one line per basis. curves: {basis: [{n_kept, key}]}."""
  fig, ax = plt.subplots(figsize=(5, 3.4))
  for name, rows in curves.items():
    rows = sorted(rows, key=lambda r: r["n_kept"])
    ax.plot([r["n_kept"] for r in rows], [r[key] for r in rows], marker=".", label=name)
  if threshold is not None:
    ax.axhline(threshold, color="grey", lw=0.8, ls="--")
  ax.set_xscale("symlog", linthresh=10)
  ax.set_xlabel("directions kept (of the node's original dimension)")
  ax.set_ylabel(key)
  ax.legend(fontsize=8)
  return _save(fig, path, title)


def interaction_graph(edges: list, names: list, path: str, max_nodes: int = 30,
                      max_edges: int = 200, title: str = "", skip_const: list | None = None) -> str:
  """Layered graph: node layer l in column l with its first `max_nodes` features (most important
  first, top), edges E^l [k_out, k_in] drawn with width and opacity ∝ E / max E^l (the strongest
  `max_edges` per layer). skip_const[l]: number of leading (constant) features not drawn."""
  skip_const = skip_const or [0] * len(names)
  sizes = [e.shape[1] for e in edges] + [edges[-1].shape[0]]
  shown = [min(s - c, max_nodes) for s, c in zip(sizes, skip_const)]
  fig, ax = plt.subplots(figsize=(2.2 * len(names) + 1, 6))
  ypos = lambda n, i: 1 - (i + 0.5) / max(n, 1)  # noqa: E731
  for l, e in enumerate(edges):
    ci, co = skip_const[l], skip_const[l + 1]
    sub = np.asarray(e)[co:co + shown[l + 1], ci:ci + shown[l]]
    if sub.size == 0 or sub.max() <= 0:
      continue
    w = sub / sub.max()
    flat = np.argsort(-w.ravel())[:max_edges]
    for f in flat:
      i, j = divmod(int(f), sub.shape[1])
      ax.plot([l, l + 1], [ypos(shown[l], j), ypos(shown[l + 1], i)], color="C0",
              lw=0.2 + 3 * w[i, j], alpha=float(min(1.0, 0.1 + w[i, j])))
  for l, n in enumerate(shown):
    ax.scatter([l] * n, [ypos(n, i) for i in range(n)], s=12, color="k", zorder=3)
  ax.set_xticks(range(len(names)), names)
  ax.set_yticks([])
  return _save(fig, path, title)


def response_curves(values: np.ndarray, curves: np.ndarray, feature: int, path: str) -> str:
  """Target output i for the input x e_i against the label 2x: feature `feature`, then all.

  values: [V]; curves: [n_features, V].
  """
  fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
  for ax, rows, name in ((axes[0], curves[feature:feature + 1], f"feature {feature}"),
                         (axes[1], curves, f"all {len(curves)} features")):
    for r in rows:
      ax.plot(values, r, color="C0", alpha=1.0 if len(rows) == 1 else 0.25, lw=1)
    ax.plot(values, 2 * values, "k--", lw=1, label="label x + ReLU(x) = 2x")
    ax.set_xlabel("input value x_i"), ax.set_title(name, fontsize=9)
  axes[0].set_ylabel("output y_i"), axes[0].legend(fontsize=8)
  return _save(fig, path, "ResidMLP target response")


def neuron_heatmaps(target: np.ndarray, comp: np.ndarray, best: np.ndarray, path: str) -> str:
  """Neuron contributions per feature: the target's and its best component's. [F, neurons]."""
  lim = max(np.abs(target).max(), np.abs(comp).max(), 1e-6)
  fig, axes = plt.subplots(2, 1, figsize=(9, 4.2), sharex=True)
  for ax, mat, name in ((axes[0], target, "target"), (axes[1], comp, "best APD component")):
    im = ax.imshow(mat, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_ylabel("feature"), ax.set_title(name, fontsize=9)
  axes[1].set_yticks(range(len(best)), [f"{i} (c{b})" for i, b in enumerate(best)], fontsize=6)
  axes[1].set_xlabel("neuron")
  fig.colorbar(im, ax=axes, shrink=0.8)
  fig.suptitle("Neuron contributions (W_U[i] W_out) * (W_in W_E[:, i])", fontsize=10)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def one_hot_mse(top1: np.ndarray, batch: np.ndarray, n_active: np.ndarray, path: str) -> str:
  """Per-feature MSE on one-hot inputs with top-1 and batch top-k, and the scatter of the mean
  number of active components (batch top-k) against the top-1 MSE. All [n_features]."""
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
  order = np.argsort(top1)
  axes[0].plot(top1[order], ".", ms=3, label="top-1")
  axes[0].plot(batch[order], ".", ms=3, label="batch top-k")
  axes[0].set_yscale("log"), axes[0].set_xlabel("feature (sorted by top-1 MSE)")
  axes[0].set_ylabel("MSE to target"), axes[0].legend(fontsize=8)
  axes[1].scatter(n_active, top1, s=6)
  axes[1].set_yscale("log"), axes[1].set_xlabel("mean active components (batch top-k)")
  axes[1].set_ylabel("top-1 MSE")
  return _save(fig, path, "APD on one-hot inputs")


def scrub_histograms(scrub: np.ndarray, anti: np.ndarray, topk_mse: float, baseline: float,
                     path: str, ideal: tuple[float, float] | None = None) -> str:
  """Histograms of per-sample MSE with scrubbed and anti-scrubbed ablations (log x); ideal: the
  (scrubbed, anti-scrubbed) mean MSE of a reference decomposition, drawn as lines."""
  vals = np.concatenate([scrub, anti])
  lo = max(vals[vals > 0].min() if np.any(vals > 0) else 1e-12, 1e-12)
  bins = np.logspace(np.log10(lo), np.log10(max(vals.max(), lo * 10)), 60)
  fig, ax = plt.subplots(figsize=(6, 3.4))
  ax.hist(np.maximum(scrub, lo), bins, alpha=0.6, label="scrubbed")
  ax.hist(np.maximum(anti, lo), bins, alpha=0.6, label="anti-scrubbed")
  ax.axvline(topk_mse, color="k", ls="--", lw=1, label="APD top-k (mean)")
  ax.axvline(baseline, color="C3", ls=":", lw=1, label="monosemantic baseline")
  if ideal is not None:
    for v, color, what in zip(ideal, ("C0", "C1"), ("scrubbed", "anti-scrubbed")):
      ax.axvline(v, color=color, ls="-.", lw=1, label=f"ideal rank-1 per-feature, {what} (mean)")
  ax.set_xscale("log"), ax.set_xlabel("MSE to target"), ax.set_ylabel("samples")
  ax.legend(fontsize=8)
  return _save(fig, path, "Ablating half of the live components")


def subnetwork_weights(target: dict, blocks: dict, path: str, title: str = "") -> str:
  """L3D figure: each decomposed tensor of the target (top row) next to every subnetwork's block
  of it (one row per subnetwork). target: {name: array}; blocks: {name: [n_v, *shape]}; tensors
  of order 1 are drawn as a row, higher orders flattened to 2-d."""
  names = list(target)
  n_v = next(iter(blocks.values())).shape[0]
  as2d = lambda a: np.atleast_2d(a.reshape(a.shape[0], -1) if a.ndim > 2 else a)
  fig, axes = plt.subplots(n_v + 1, len(names), figsize=(1.8 * len(names) + 1, 1.2 * (n_v + 1)),
                           squeeze=False)
  for j, nm in enumerate(names):
    rows = [("target", np.asarray(target[nm]))] + [(f"v{k}", np.asarray(blocks[nm][k]))
                                                   for k in range(n_v)]
    for i, (lbl, a) in enumerate(rows):
      a = as2d(a)
      lim = max(np.abs(a).max(), 1e-9)
      axes[i, j].imshow(a, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
      axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
      if j == 0:
        axes[i, j].set_ylabel(lbl, fontsize=8)
      if i == 0:
        axes[i, j].set_title(nm, fontsize=8)
  return _save(fig, path, title)


def perturbation_sweeps(deltas: np.ndarray, change: np.ndarray, uses: np.ndarray,
                        path: str, title: str = "") -> str:
  """L3D figure: mean |output change| against delta for f(x, W0 + delta v_k), per subnetwork,
  separately for the samples that use its feature and the others.

  deltas: [D]; change: [D, n_v, B]; uses: [B, n_v] bool."""
  n_v = change.shape[1]
  fig, axes = plt.subplots(1, n_v, figsize=(2.4 * n_v, 2.4), squeeze=False)
  for k in range(n_v):
    ax = axes[0, k]
    on, off = uses[:, k], ~uses[:, k]
    if on.any():
      ax.plot(deltas, change[:, k, on].mean(1), label="feature active")
    if off.any():
      ax.plot(deltas, change[:, k, off].mean(1), label="inactive", ls="--")
    ax.set_title(f"v{k}", fontsize=9), ax.set_xlabel("delta", fontsize=8)
  axes[0, 0].set_ylabel("mean |f(W0 + delta v) - f(W0)|", fontsize=8)
  axes[0, 0].legend(fontsize=7)
  return _save(fig, path, title)
