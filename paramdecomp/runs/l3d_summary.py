"""The summary of an L3D run on a toy target (docs/methods §3.5-3.6): reconstruction on the
training set and held out (with the bound no n_v subnetworks can beat), P_act, impact and
specificity of each subnetwork, the per-model recovery measures and the figures."""
from __future__ import annotations

import json
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from paramdecomp.core import pytree
from paramdecomp.methods import l3d
from paramdecomp.methods import l3d_measures as ms
from paramdecomp.runs import figures

# the summary's reconstruction bound stacks n_eval x n_w per-sample gradient entries
BOUND_MAX_ENTRIES = 1 << 24


def summarize(c, plan, target, tcfg, raw, state: l3d.State, key, workdir) -> dict:
  """Reconstruction error (`reconstruction`), P_act, impact and specificity of each subnetwork
  (`activity`), per-model recovery metrics (`MODEL_METRICS`) and the figures (subnetwork weights
  next to the target's; perturbation sweeps). `state`: the trained `l3d.State`."""
  tcfg = plan.extra["tcfg"]
  held = target.batch(jax.random.fold_in(key, 4), tcfg, c.n_eval)
  out = reconstruction(c, plan, state, held, key)
  act, pact, uses = activity(c, plan, target.kind, state, held, key)
  out.update(act)
  metrics = MODEL_METRICS.get(tcfg.model.kind)
  if metrics is not None:
    out.update(metrics(tcfg, raw, plan.params, state, pact))
  if jax.process_index() == 0:
    out["figures"] = draw_figures(c, plan, state, held, uses, workdir)
  logging.info("summary: %s", json.dumps(out))
  return out


def reconstruction(c, plan, state: l3d.State, held, key) -> dict:
  """Reconstruction error on the training set and held out (the mean of the per-batch losses,
  and pooled over all batches); on held-out also the lower bound for the pooled loss of any n_v
  subnetworks (`l3d_measures.reconstruction_bound`) and, for one-feature groups, what one
  direction per feature could give (`feature_direction_measures`)."""
  apply, params, cfg = plan.apply, plan.params, c.l3d

  @jax.jit
  def err_total(s, p, x, k):
    _, m = l3d.batch_loss(s, p, x, k, apply=apply, cfg=cfg)
    return m["err"], m["total"]

  def losses(xs, k, st=None):
    """(mean of the per-batch losses, the loss pooled over all batches) of state `st`."""
    st = state if st is None else st
    nb = xs.shape[0] // c.batch_size
    ks = jax.random.split(k, nb)
    et = np.array([err_total(st, params, xs[i * c.batch_size:(i + 1) * c.batch_size], ks[i])
                   for i in range(nb)], dtype=np.float64)
    return (float(np.mean(et[:, 0] / (et[:, 1] + l3d.LOSS_EPS))),
            float(et[:, 0].sum() / (et[:, 1].sum() + l3d.LOSS_EPS)))

  out = {}
  out["recon_train"], out["recon_train_pooled"] = losses(plan.data, jax.random.fold_in(key, 5))
  out["recon_heldout"], out["recon_heldout_pooled"] = losses(held, jax.random.fold_in(key, 6))
  n_w = sum(w.size for w in pytree.get(params, list(state.dec)).values())
  if c.n_eval * n_w <= BOUND_MAX_ENTRIES:
    g, xg = ms.stacked_gradients(apply, params, list(state.dec), held,
                                 jax.random.fold_in(key, 6), cfg, c.batch_size)
    # no n_v subnetworks can beat it, top-k or not
    out["recon_bound_heldout"] = ms.energy_outside_top(g, [cfg.n_subnets])[0]
    if plan.extra["tcfg"].data.get("group_size", 1) == 1:
      fd = ms.feature_directions(g, xg, l3d.blocks(state.dec))
      out.update(feature_direction_measures(apply, params, fd, c, g, xg, held))
      # one subnetwork per feature at best: the features' own directions as encoder and decoder,
      # on the same held-out batches and references
      if len(fd[next(iter(fd))].core) == cfg.n_subnets:
        out["feature_direction_recon_heldout"] = losses(
            held, jax.random.fold_in(key, 6), l3d.State(fd, fd))[0]
  return out


def activity(c, plan, kind: str, state: l3d.State, held, key):
  """(P_act on the training set, dead subnetworks, the feature each subnetwork serves most (by
  impact, held out) and its specificity at delta and delta / 10 (on a `squares` target also with
  the hidden layers alone moved, §3.6); P_act [n_v]; uses [B, n_v]: whether each held-out sample
  uses the subnetwork's feature)."""
  apply, params, cfg = plan.apply, plan.params, c.l3d
  pact = jax.jit(lambda s, p, x, k: l3d.p_act(apply, p, s, x, k, cfg, c.batch_size))(
      state, params, plan.data, jax.random.fold_in(key, 7))
  out = {"p_act": [round(float(v), 5) for v in pact], "dead": int((pact == 0).sum())}
  imp = jax.jit(lambda p, e, x, k: ms.impact(apply, p, e, x, k, cfg))(
      params, state.enc, held, jax.random.fold_in(key, 8))
  feat = ms.feature_of_subnet(imp, held)
  out["feature_of_subnet"] = [int(f) for f in feat]
  uses = held[:, feat] != 0                                          # [B, K]
  spec = lambda delta, paths=None: _rounded(ms.specificity(
      ms.output_change(apply, params, state.dec, held, delta, paths), uses))
  out["specificity"] = spec(c.perturb_delta)
  out["specificity_small_delta"] = spec(c.perturb_delta / 10)
  if kind == "squares":  # hidden layers only: no first/last layer tensors (§3.6)
    last = f"layers/{len(params['layers']) - 1}/"
    out["specificity_hidden_only"] = spec(
        c.perturb_delta, [p for p in state.dec if not p.startswith(("layers/0/", last))])
  return out, pact, uses


def _rounded(a) -> list[float]:
  return [round(float(v), 3) for v in a]


def draw_figures(c, plan, state: l3d.State, held, uses, workdir) -> list[str]:
  """The subnetworks' weights next to the target's, and each subnetwork's perturbation sweep
  over +-4 delta on the held-out samples (split by whether they use its feature)."""
  apply, params = plan.apply, plan.params
  deltas = jnp.linspace(-4 * c.perturb_delta, 4 * c.perturb_delta, 17)
  moved = ms.perturb(apply, params, state.dec, held, deltas)          # [D, K, B, ...]
  base = apply(params, held)
  diff = jnp.abs(moved - base[None, None]).reshape(moved.shape[:3] + (-1,)).mean(-1)
  return [
      figures.subnetwork_weights(
          {p: np.asarray(w) for p, w in pytree.get(params, list(state.dec)).items()},
          subnet_blocks(state), os.path.join(workdir, "subnetworks.png")),
      figures.perturbation_sweeps(np.asarray(deltas), np.asarray(diff), np.asarray(uses),
                                  os.path.join(workdir, "perturbation_sweeps.png"))]


def feature_direction_measures(apply, params, fd, c, g, xg, held) -> dict:
  """What one subnetwork per input feature could show at best (`l3d_measures.feature_directions`:
  each feature's top gradient direction): its specificity (same measure and delta as the
  subnetworks'), and the share of each feature's gradient energy on parameters no other sample
  moves (`private_share`). fd: the directions as a decoder map (`ms.feature_directions`)."""
  uses = held != 0
  return {"feature_direction_specificity": _rounded(ms.specificity(
              ms.output_change(apply, params, fd, held, c.perturb_delta), uses)),
          "feature_private_share": _rounded(ms.private_share(g, xg))}


def subnet_blocks(state: l3d.State) -> dict:
  """{path: [n_v, *shape]} the decoder's blocks on the host."""
  return {p: np.asarray(b) for p, b in l3d.blocks(state.dec).items()}


def tms_feature_cosines(params, state: l3d.State) -> dict:
  """TM1 (§3.5): per feature i, the subnetwork with the largest share of its norm on feature i's
  support {W_in[:, i], W_out[i, :], b_i}, and |cos| of that subnetwork's W_in[:, i] block (decoder
  map, and encoder map) with the target's W_in[:, i]."""
  out = {"match": [], "cos_dec": [], "cos_enc": [], "support": []}
  maps = {s: {p: np.asarray(b) for p, b in l3d.blocks(m).items()}
          for s, m in zip(l3d.State._fields, state)}
  d = maps["dec"]
  w_in = np.asarray(params["W_in"])
  tot = sum(np.sum(b.reshape(b.shape[0], -1) ** 2, axis=1) for b in d.values())
  for i in range(w_in.shape[1]):
    on = np.sum(d["W_in"][:, :, i] ** 2, 1)
    if "W_out" in d:
      on = on + np.sum(d["W_out"][:, i, :] ** 2, 1)
    if "b" in d:
      on = on + d["b"][:, i] ** 2
    share = on / tot
    k = int(np.argmax(share))
    cos = lambda v: float(abs(v @ w_in[:, i]) / (np.linalg.norm(v) * np.linalg.norm(w_in[:, i])
                                                 + 1e-12))
    out["match"].append(k)
    out["support"].append(round(float(share[k]), 4))
    out["cos_dec"].append(round(cos(maps["dec"]["W_in"][k, :, i]), 4))
    out["cos_enc"].append(round(cos(maps["enc"]["W_in"][k, :, i]), 4))
  out["distinct_matches"] = len(set(out["match"]))
  return out


def coefficient_correlation(a: np.ndarray, state: l3d.State) -> float:
  """TM2 coefficient recovery (§3.6): per subnetwork Q_k = (W_out^k W_in^k)^T (x -> x Q layout),
  i* = argmax_i |row sum of Q_k|, pooled Pearson r of Q_k[i*, :] against A[i*, :]. Each row is
  sign-aligned and scaled to unit norm first (a subnetwork's scale and sign are arbitrary), as is
  each A row."""
  d = subnet_blocks(state)
  qs, ys = [], []
  for k in range(d["W_in"].shape[0]):
    q = (d["W_out"][k] @ d["W_in"][k]).T                     # [n_in, n_out]
    i = int(np.argmax(np.abs(q.sum(1))))
    row = q[i] * np.sign(q[i].sum())
    qs.append(row / (np.linalg.norm(row) + 1e-12))
    ys.append(a[i] / np.linalg.norm(a[i]))
  return float(np.corrcoef(np.concatenate(qs), np.concatenate(ys))[0, 1])


def group_assignment(state: l3d.State, pact, group_size: int) -> dict:
  """TM3: for each live subnetwork, the co-active input group holding most of its W_in mass."""
  w = subnet_blocks(state)["W_in"]                           # [K, h, n]
  mass = np.sum(w**2, axis=1).reshape(w.shape[0], -1, group_size).sum(-1)  # [K, groups]
  live = [k for k in range(w.shape[0]) if pact[k] > 0]
  groups = [int(np.argmax(mass[k])) for k in live]
  share = [round(float(mass[k].max() / mass[k].sum()), 4) for k in live]
  n_groups = mass.shape[1]
  return {"live": live, "group_of_live": groups, "group_share": share,
          "one_live_per_group": sorted(groups) == list(range(n_groups))}


def tms_metrics(tcfg, raw, params, state: l3d.State, pact) -> dict:
  del tcfg, raw, pact
  return {"tms": tms_feature_cosines(params, state)} if "W_in" in state.dec else {}


def circuits_metrics(tcfg, raw, params, state: l3d.State, pact) -> dict:
  """TM2 (one-feature groups): coefficient recovery; TM3 (co-active groups): group assignment."""
  del params
  if "W_in" not in state.dec or "W_out" not in state.dec:
    return {}
  gs = int(tcfg.data.get("group_size", 1))
  if gs == 1:
    return {"coef_corr": coefficient_correlation(np.asarray(raw["A"]), state)}
  return {"groups": group_assignment(state, np.asarray(pact), gs)}


# the recovery measures of an L3D run on a target of each model kind:
# ``(tcfg, raw_params, params, state, p_act) -> dict``
MODEL_METRICS = {"tms": tms_metrics, "circuits": circuits_metrics}
