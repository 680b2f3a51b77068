"""The summary of an SPD run (METHODS.md §2.8): final losses on a fresh batch, CI-L0 and alive
counts, non-negligible subcomponents per weight, CI heatmaps on one-hot inputs (PNG), and the
target kind's analyses (TMS: MMCS / ML2R and the arrows; ResidMLP: subcomponents per feature and
the neuron-contribution scatter)."""
from __future__ import annotations

import json
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from paramdecomp.core.metrics import mmcs_ml2r, share_structure
from paramdecomp.methods import spd
from paramdecomp.runs import figures
from paramdecomp.toy_models import tms


def greedy_order(ci: np.ndarray) -> np.ndarray:
  """Column order of a CI matrix [n_inputs, C]: input i (in turn) takes the not-yet-used
  subcomponent with the highest CI on it; the unused ones follow."""
  used = []
  for row in ci:
    rest = [c for c in np.argsort(-row) if c not in used]
    if rest:
      used.append(rest[0])
  return np.asarray(used + [c for c in range(ci.shape[1]) if c not in used])


def ci_heatmaps(ci: dict, path: str, title: str = "", shown: float = 0.01) -> str:
  """One heatmap per site: CI [n_inputs, C] on one-hot inputs of the subcomponents whose CI
  exceeds `shown` on some input (as the paper's figures leave out the dead ones), columns in
  `greedy_order`. Panels 1.5-5 inches high, so a 100-input site stays readable."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  heights = [min(max(1.0 + 0.04 * v.shape[0], 1.5), 5.0) for v in ci.values()]
  fig, axes = plt.subplots(len(ci), 1, figsize=(8, 0.6 + sum(heights)), squeeze=False,
                           layout="constrained", gridspec_kw={"height_ratios": heights})
  for ax, (site, v) in zip(axes[:, 0], ci.items()):
    alive = np.flatnonzero(v.max(0) > shown)
    v = v[:, alive] if alive.size else v[:, :1]
    im = ax.imshow(v[:, greedy_order(v)], vmin=0, vmax=1, cmap="Blues", aspect="auto",
                   interpolation="nearest")
    ax.set_title(f"{site}: {alive.size} of {ci[site].shape[1]} subcomponents with CI > {shown}",
                 fontsize=9)
    ax.set_ylabel("input feature")
  axes[-1, 0].set_xlabel("subcomponent (greedy order)")
  fig.colorbar(im, ax=axes[:, 0].tolist(), shrink=0.6)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def one_hot_ci(apply, params, state, n_features: int, value: float, cfg) -> dict:
  """{site: CI [n_features, C]} on the inputs value * e_i."""
  x = value * jnp.eye(n_features, dtype=jax.tree.leaves(params)[0].dtype)
  g = jax.jit(lambda s, p, x: spd.causal_importances(apply, p, s, x, cfg))(state, params, x)
  return {k: np.asarray(v) for k, v in g.items()}


def counts(state, frac: float) -> dict:
  """{path: non-negligible subcomponents}: Frobenius norm above `frac` of the weight's largest."""
  return {p: int(np.sum(r > frac)) for p, r in norm_ratios(state).items()}


def norm_ratios(state) -> dict:
  """{path: [C] subcomponent Frobenius norms over the weight's largest, in falling order}: how
  clear the non-negligible cut of `counts` is."""
  norms = {p: np.sort(np.asarray(n))[::-1] for p, n in spd.subcomponent_norms(state).items()}
  return {p: n / float(n[0]) for p, n in norms.items()}


def figure_counts(mats: dict, cut: float, cut_hidden: float) -> dict:
  """The subcomponent counts of the SPD paper's TMS figures (spd-paper's
  `experiments/tms/plotting.py`): an encoder subcomponent W_c [hidden, features] counts where
  sum_f |W_c[:, f]| > `cut`, a hidden one where |hidden_c|_F > `cut_hidden`. The cuts are
  absolute, not relative to the largest: that code's defaults are 0.017 and 0.009, and its
  5-2+ID figure sets 0.03 and 0.0115. Also the measures in falling order, to show the cut.
  mats: `spd.subcomponents` of the state."""
  col = np.sort(np.linalg.norm(np.asarray(mats["W"]), axis=1).sum(-1))[::-1]
  out = {"W": int((col > cut).sum()), "W_measure": col}
  if "hidden" in mats:
    h = np.sort(np.linalg.norm(np.asarray(mats["hidden"]), axis=(1, 2)))[::-1]
    out.update(hidden=int((h > cut_hidden).sum()), hidden_measure=h)
  return out


def tms_measures(w, subs: dict, c) -> dict:
  """Of the subcomponents `subs` (`spd.subcomponents`) of a TMS target with encoder W [h, n]:
  MMCS / ML2R, `share_structure`'s merged subcomponents and split features, and the paper
  figures' counts at c.analysis's cuts (`figure_count_*`, with `figure_measure_*` up to three
  past the cut)."""
  mmcs, ml2r = mmcs_ml2r(w, subs["W"])
  out = dict(mmcs=float(mmcs), ml2r=float(ml2r), **share_structure(w, subs["W"]))
  fig = figure_counts(subs, c.analysis.figure_cut, c.analysis.figure_cut_hidden)
  for p in ("W", "hidden"):
    if p in fig:
      out[f"figure_count_{p}"] = fig[p]
      out[f"figure_measure_{p}"] = [round(float(v), 4) for v in fig[f"{p}_measure"][:fig[p] + 3]]
  return out


def tms_analysis(c, params, state, tcfg, ci, out_dir) -> dict:
  w = params["W"]
  subs = spd.subcomponents(state)
  mats = subs["W"]
  out = dict(tms_measures(w, subs, c), n_features=int(tcfg.model.n_features),
             represented_features=int(tms.represented_features(params).sum()))
  if "hidden" in state.sub:   # the identity: m1 subcomponents summing to I, CI ~1 everywhere
    h = np.asarray(subs["hidden"].sum(0))
    out["hidden_sum_error"] = float(np.abs(h - np.asarray(params["hidden"]).reshape(h.shape))
                                    .max())
  if w.shape[0] == 2 and jax.process_index() == 0:
    norms = np.asarray(spd.subcomponent_norms(state)["W"])
    keep = norms > c.analysis.negligible * float(norms.max())
    out["arrows_figure"] = figures.tms_arrows(
        np.asarray(w), np.asarray(mats)[keep], os.path.join(out_dir, "tms_subcomponents.png"),
        title=f"SPD on TMS {w.shape[1]}-{w.shape[0]}: MMCS {out['mmcs']:.3f}, "
              f"ML2R {out['ml2r']:.3f}")
  return out


def resid_mlp_analysis(c, params, state, tcfg, ci, out_dir) -> dict:
  """Per layer: W_in subcomponents active (CI > analysis.active) on each one-hot input, W_out
  subcomponents active on every one-hot input and against the neurons the target fires there
  (its pre-activations on the one-hot input, earlier layers included); each feature's summed
  neuron contribution of its best W_in subcomponent (W_out at the sum of its subcomponents)
  against the target's, both read through the embedding alone (the direct path). With several
  layers also `all_layers/`: W_in subcomponents active per feature and W_out subcomponents active
  on every input, summed over the layers (the paper's 2- and 3-layer results span layers)."""
  act = c.analysis.active
  out, target_nc, spd_nc = {}, [], []
  mats = spd.subcomponents(state)
  w_e = np.asarray(params["W_E"])
  n = w_e.shape[1]
  resid = c.analysis.one_hot * w_e.T          # [n, d_resid]: the target's stream on e_f
  in_all, out_every = np.zeros(n, int), 0      # summed over the layers (the paper's 2L / 3L view)
  for i in sorted(params["layers"], key=int):
    p_in, p_out = f"layers/{i}/W_in", f"layers/{i}/W_out"
    w_in, w_out = np.asarray(params["layers"][i]["W_in"]), np.asarray(params["layers"][i]["W_out"])
    pre = resid @ w_in.T                                             # [n, d_mlp]
    resid = resid + np.maximum(pre, 0) @ w_out.T
    if p_in in ci:
      on = ci[p_in] > act                                            # [n, C]
      in_all = in_all + on.sum(1)
      out[f"{p_in}/per_feature"] = [int(k) for k in on.sum(1)]
      out[f"{p_in}/features_with_one"] = int((on.sum(1) == 1).sum())
      out[f"{p_in}/distinct"] = int(len({int(np.argmax(r)) for r in ci[p_in]}))
    if p_out in ci:
      out[f"{p_out}/active_on_every_input"] = int((ci[p_out] > act).all(0).sum())
      out_every += out[f"{p_out}/active_on_every_input"]
    if p_out in ci and p_out in mats:
      out.update({f"{p_out}/{k}": v for k, v in
                  w_out_neurons(ci[p_out] > act, np.asarray(mats[p_out]), pre).items()})
    if p_in in mats and p_out in mats:
      sub_in = np.asarray(mats[p_in])                                # [C, d_mlp, d_resid]
      full_out = np.asarray(mats[p_out]).sum(0)
      for f in range(n):
        read = w_e[:, f] @ w_out                                     # W_U[f] W_out  [d_mlp]
        target_nc.append(read * (w_in @ w_e[:, f]))
        cand = (w_e[:, f] @ full_out) * (sub_in @ w_e[:, f])         # [C, d_mlp]
        spd_nc.append(cand[np.argmax(cand.sum(1))])
  if len(params["layers"]) > 1:
    out["all_layers/W_in_per_feature"] = [int(k) for k in in_all]
    out["all_layers/W_in_features_with_one"] = int((in_all == 1).sum())
    out["all_layers/W_out_active_on_every_input"] = out_every
  if target_nc:
    t, s = np.concatenate(target_nc), np.concatenate(spd_nc)
    out["contribution_slope"] = float(t @ s / max(t @ t, 1e-30))
    if jax.process_index() == 0:
      import matplotlib
      matplotlib.use("Agg")
      import matplotlib.pyplot as plt
      fig, ax = plt.subplots(figsize=(4, 4))
      ax.scatter(t, s, s=4)
      lim = [min(t.min(), s.min()), max(t.max(), s.max())]
      ax.plot(lim, lim, "k--", lw=0.8)
      ax.set_xlabel("target neuron contribution")
      ax.set_ylabel("best W_in subcomponent's")
      out["contributions_figure"] = figures._save(
          fig, os.path.join(out_dir, "neuron_contributions.png"),
          f"slope {out['contribution_slope']:.3f}")
  return out


def w_out_neurons(active: np.ndarray, sub_out: np.ndarray, pre: np.ndarray) -> dict:
  """How a ResidMLP layer's W_out subcomponents line up with its neurons on one-hot inputs.

  active [n, C]: subcomponent c active on input e_f; sub_out [C, d_resid, d_mlp]: the
  subcomponents' matrices; pre [n, d_mlp]: the target's neuron pre-activations on e_f (a neuron
  fires where pre > 0). Each subcomponent's neuron is the column carrying most of its norm.
  Returns the mean active subcomponents and firing neurons per input, the inputs on which the
  active subcomponents' neurons are exactly the firing neurons, and how many of the
  subcomponents active anywhere hold >= 90% of their squared norm in one neuron's column, and
  how many distinct neurons those subcomponents map to."""
  col = np.sum(sub_out ** 2, axis=1)                                          # [C, d_mlp]
  neuron = np.argmax(col, axis=1)
  share = col.max(1) / np.maximum(col.sum(1), 1e-30)
  fires = pre > 0
  match = sum(set(neuron[active[f]].tolist()) == set(np.flatnonzero(fires[f]).tolist())
              for f in range(active.shape[0]))
  used = active.any(0)
  return {"active_per_input": float(active.sum(1).mean()),
          "firing_neurons_per_input": float(fires.sum(1).mean()),
          "inputs_active_equal_firing": int(match),
          "single_neuron_subcomponents": int((used & (share >= 0.9)).sum()),
          "subcomponents_active_somewhere": int(used.sum()),
          "neurons_of_active_subcomponents": int(len(set(neuron[used].tolist())))}


ANALYSES = {"tms": tms_analysis, "resid_mlp": resid_mlp_analysis}


def summarize(c, plan, target, tcfg, raw, state: spd.State, key, out_dir) -> dict:
  """Final losses and CI statistics on a fresh batch, counts, heatmaps and the kind's analyses."""
  del raw
  apply, params, mcfg = plan.apply, plan.params, plan.cfg
  x = plan.batch_fn(jax.random.fold_in(key, 2))
  total, metrics = jax.jit(lambda s, p, x, k: spd.loss(s, p, x, k, apply=apply, cfg=mcfg))(
      state, params, x, jax.random.fold_in(key, 3))
  out = {"loss": float(total), **{k: float(v) for k, v in metrics.items()}}
  out["non_negligible"] = counts(state, c.analysis.negligible)
  # the cut's neighbourhood: the largest few norms past the kept ones, over the largest
  out["norm_ratios"] = {p: [round(float(v), 4) for v in r[:out["non_negligible"][p] + 3]]
                        for p, r in norm_ratios(state).items()}
  out["non_negligible_total"] = int(sum(out["non_negligible"].values()))
  ci = {}
  n_in = getattr(tcfg.model, "n_features", None) if target.kind in ANALYSES else None
  if n_in:
    ci = one_hot_ci(apply, params, state, n_in, c.analysis.one_hot, mcfg)
    if jax.process_index() == 0:
      out["ci_figure"] = ci_heatmaps(ci, os.path.join(out_dir, "ci_one_hot.png"),
                                     f"CI on one-hot inputs ({c.analysis.one_hot})")
  if target.kind in ANALYSES:
    out.update(ANALYSES[target.kind](c, params, state, tcfg, ci, out_dir))
  logging.info("summary: %s", json.dumps(out))
  return out
