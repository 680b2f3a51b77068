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
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
