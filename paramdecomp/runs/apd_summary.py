"""The summary of an APD run: final losses and component use on a fresh batch, and the analyses
of the target's kind (TMS: MMCS / ML2R and the arrow figure; ResidMLP: the paper's analyses,
`resid_mlp_apd`)."""
from __future__ import annotations

import functools
import json
import os

from absl import logging
import jax
import ml_collections
import numpy as np

from paramdecomp.core import lowrank
from paramdecomp.core.metrics import mmcs_ml2r, share_structure
from paramdecomp.methods import apd
from paramdecomp.runs import figures, resid_mlp_apd
from paramdecomp.toy_models import tms


def tms_measures(w, comps, use) -> dict:
  """MMCS / ML2R of components comps [C, d, n] against the TMS target's W [d, n] over all of
  them (the paper's) and over those in use (`use` [C]: the share of samples selecting each, > 0),
  and `share_structure`'s merged components and split features. A component never selected can
  still hold a copy of W's columns at a few percent of their norm (the part of W the used ones
  leave out, for faithfulness): it then wins the paper's argmax by cosine and its tiny norm sets
  ML2R, which `ml2r_in_use` leaves out."""
  mm, ml = mmcs_ml2r(w, comps)
  mmu, mlu = mmcs_ml2r(w, comps[np.asarray(use) > 0])
  return dict(mmcs=float(mm), ml2r=float(ml), mmcs_in_use=float(mmu), ml2r_in_use=float(mlu),
              **share_structure(w, comps))


def loss_terms(apply, params, cfg, xs, factors: dict) -> dict:
  """APD's loss terms (cfg: the `apd` config) and their weighted total for the components
  `factors` {path: Factors}, averaged over the batches `xs`."""
  frozen = ml_collections.FrozenConfigDict(cfg)   # hashable: one compilation per config
  ms = [_terms(apd.State(factors), params, x, apply, frozen) for x in xs]
  out = {k: float(np.mean([float(m[k]) for m in ms]))
         for k in ("faithfulness", "minimality", "simplicity")}
  return dict(out, total=cfg.faithfulness_coeff * out["faithfulness"]
              + cfg.minimality_coeff * out["minimality"] + cfg.simplicity_coeff * out["simplicity"])


@functools.partial(jax.jit, static_argnames=("apply", "cfg"))
def _terms(state, params, x, apply, cfg):
  return apd.loss(state, params, x, None, apply=apply, cfg=cfg)[1]


def merge_costs(apply, params, cfg, xs, pairs) -> dict:
  """`loss_terms` at the ground-truth decomposition of a TMS target
  (`tms.ground_truth_factors`) and, for each feature pair (a, b) in `pairs`, how much each term
  rises when a and b share one component (the other empty): the loss's own verdict on the merged
  runs. The batches `xs` are the same for every candidate, so the differences are paired.
  Returns {'ground_truth': {term: value}, 'pairs': [{'pair', 'cos', 'delta_total',
  'delta_minimality', 'delta_simplicity'}]}."""
  at = lambda merge: loss_terms(
      apply, params, cfg, xs, {"W": tms.ground_truth_factors(params["W"], cfg.C, cfg.m, merge)})
  base, w = at(None), np.asarray(params["W"])
  rows = []
  for a, b in pairs:
    t = at((a, b))
    cos = w[:, a] @ w[:, b] / (np.linalg.norm(w[:, a]) * np.linalg.norm(w[:, b]))
    rows.append(dict(pair=(int(a), int(b)), cos=float(cos),
                     **{f"delta_{k}": t[k] - base[k] for k in ("total", "minimality",
                                                               "simplicity")}))
  return {"ground_truth": base, "pairs": rows}


def tms_analysis(c, params, state: apd.State, tcfg, use, key, out_dir) -> dict:
  """`tms_measures` of the components against W (§1.8) and, for 2-d hidden spaces, the
  arrows."""
  del c, key
  w = params["W"]
  mats = lowrank.components(state.factors["W"])
  out = dict(tms_measures(w, mats, use),
             represented_features=int(tms.represented_features(params).sum()),
             n_features=int(tcfg.model.n_features))
  if w.shape[0] == 2 and jax.process_index() == 0:
    out["figure"] = figures.tms_arrows(
        np.asarray(w), np.asarray(mats), os.path.join(out_dir, "tms_components.png"),
        title=f"APD on TMS {w.shape[1]}-{w.shape[0]}: MMCS {out['mmcs']:.3f}, "
              f"ML2R {out['ml2r']:.3f}")
  return out


def resid_mlp_analysis(c, params, state: apd.State, tcfg, use, key, out_dir) -> dict:
  del use
  a = c.analysis
  return resid_mlp_apd.analyse(params, state, c.apd, tcfg, key, out_dir, a.n_samples,
                               a.batch_size, a.cutoff)


# the analyses of an APD run on a target of each kind
ANALYSES = {"tms": tms_analysis, "resid_mlp": resid_mlp_analysis}


def summarize(c, plan, target, tcfg, raw, state: apd.State, key, out_dir) -> dict:
  """Final losses on a fresh batch, component use, and the kind's analyses (`state`: the trained
  `apd.State`)."""
  del raw
  apply, params, mcfg = plan.apply, plan.params, plan.cfg
  k = jax.random.fold_in(key, 2)
  x = plan.batch_fn(k) if plan.data is None else plan.batch_fn(k, plan.data)
  total, metrics = jax.jit(lambda cp, p, x: apd.loss(cp, p, x, None, apply=apply, cfg=mcfg))(
      state, params, x)
  out = {"loss": float(total), **{k: float(v) for k, v in metrics.items()}}
  use = jax.jit(lambda cp, p, x: apd.component_use(apply, p, cp, x, mcfg))(state, params, x)
  out["component_use"] = [round(float(u), 5) for u in use]
  out["unused_components"] = int((use == 0).sum())
  if target.kind in ANALYSES:
    out.update(ANALYSES[target.kind](c, params, state, tcfg, use, jax.random.fold_in(key, 3),
                                     out_dir))
  logging.info("summary: %s", json.dumps(out))
  return out
