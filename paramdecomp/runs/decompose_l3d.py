"""L3D decomposition of a saved toy target (docs/methods/l3d.md §3.4-3.6): run dir, summary, plots.

L3D trains on a fixed set of `n_samples` points in epochs (unlike APD's fresh batches), so it has
its own runner; it reuses the shared loop (`train.fit`), checkpoints and summary JSON. Each step
draws `batch_size` distinct points of the set uniformly (i.i.d. subsets rather than the reference
code's per-epoch shuffle); one epoch = n_samples // batch_size steps. The learning rate decays by
`lr_decay` every `lr_decay_epochs` epochs (StepLR); the first `warm_start_epochs` epochs keep a
fraction `warm_start_topk` of the coefficients. On a `run.mesh` (as APD's runner) each step's batch
and its per-sample gradient / `jvp` work split over 'data', the subnetworks' Tucker maps (and their
Adam moments) over 'components'; the training set and the target are replicated. The mesh may
span several processes (scripts/decompose_l3d.py's distributed flags): each builds the same data
and state and fills its own devices; the summary is computed whole in every process.
"""
from __future__ import annotations

import json
import os

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paramdecomp.runs import figures
from paramdecomp.methods import l3d
from paramdecomp.core import pytree, sharding, train
from paramdecomp.core import config as cfglib
from paramdecomp.methods import l3d_measures as ms
from paramdecomp.core.checkpoint import Checkpointer, save_json
from toy_models import tms
from paramdecomp.runs.targets import batch, load_target, model_apply


ZERO_ROWS = ("target", "reject", "keep")
# the summary's reconstruction bound stacks n_eval x n_w per-sample gradient entries
BOUND_MAX_ENTRIES = 1 << 24


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.target_dir = ""            # run directory of scripts/train_toy.py
  c.l3d = l3d.default_config()
  c.n_samples = 1000           # the fixed training set, drawn from the target's distribution
  c.n_eval = 1000              # held-out points for the summary
  # all-zero input rows in the decomposition data (training set and held-out): 'target' as the
  # target's generator (L3D toys reject them, §3.5), 'reject', or 'keep' (plain p = 0.05
  # sparsity: most references are then f(0); see docs/notes/l3d_tm1_tm2_bounds.md)
  c.zero_rows = "target"
  c.batch_size = 32
  c.epochs = 1000
  c.lr = 0.01                  # Adam
  c.lr_decay = 0.8
  c.lr_decay_epochs = 100
  c.warm_start_epochs = 0
  c.warm_start_topk = 0.999
  # specificity (l3d_measures.specificity) at delta and delta / 10; the sweeps span +-4 delta
  c.perturb_delta = 0.5
  c.run = ml_collections.ConfigDict(dict(log_every_epochs=50, checkpoint_every_epochs=100))
  c.run.mesh = sharding.mesh_config()
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  cfglib.check_fields(c, default_config())
  cfglib.one_of(c, "zero_rows", ZERO_ROWS)
  with cfglib.section("l3d"):
    l3d.validate(c.l3d)
  cfglib.positive(c, "n_samples", "n_eval", "batch_size", "epochs", "lr", "lr_decay",
                  "lr_decay_epochs", "warm_start_topk", "perturb_delta")
  cfglib.require(c.batch_size <= c.n_samples, "batch_size",
                 f"{c.batch_size} exceeds n_samples={c.n_samples}")
  cfglib.require(c.warm_start_topk <= 1, "warm_start_topk", "is a fraction")
  cfglib.require(0 <= c.warm_start_epochs <= c.epochs, "warm_start_epochs",
                 f"must be in [0, epochs={c.epochs}], got {c.warm_start_epochs}")
  cfglib.require(bool(c.target_dir), "target_dir", "is empty; name a scripts/train_toy.py run")
  sharding.validate_mesh(c, c.l3d.n_subnets, f"l3d.n_subnets={c.l3d.n_subnets} subnetworks")


def decomposable(tcfg, params):
  """(apply, params) of the target as L3D decomposes it: TMS untied into W_in, W_out, b (TM1);
  the circuit toys without their task matrix A."""
  kind = tcfg.model.kind
  if kind == "tms":
    return tms.apply_untied, tms.untie(params)
  if kind == "circuits":
    return model_apply(tcfg.model), {k: v for k, v in params.items() if k != "A"}
  return model_apply(tcfg.model), params


def data_config(c, tcfg) -> ml_collections.ConfigDict:
  """The target's config with its data generator as c.zero_rows asks (a copy)."""
  tcfg = ml_collections.ConfigDict(tcfg.to_dict())
  if c.zero_rows != "target":
    tcfg.data.reject_zero = c.zero_rows == "reject"
  return tcfg


def make_update(apply, cfg, batch_size: int, optimizer, mesh=None):
  """An L3D step over a fixed data set: frozen = {'target': params, 'data': [N, ...]}; on a
  `mesh` the step's batch splits over 'data'."""
  post = lambda s: {"enc": s["enc"], "dec": l3d.normalize(s["dec"], cfg.decoder_norm)}

  def loss_fn(state, frozen, key):
    kx, kr = jax.random.split(key)
    data = frozen["data"]
    x = data[jax.random.choice(kx, data.shape[0], (batch_size,), replace=False)]
    x = x if mesh is None else sharding.constrain_batch(mesh, x)
    return l3d.loss(state, frozen["target"], x, kr, apply=apply, cfg=cfg)

  return train.make_update(loss_fn, optimizer, post_update=post)


def decompose(c: ml_collections.ConfigDict, workdir: str, resume: bool = False) -> dict:
  """Decompose the target in c.target_dir; write checkpoints, metrics, summary and figures."""
  validate(c)
  tcfg, raw = load_target(c.target_dir)
  tcfg = data_config(c, tcfg)
  apply, params = decomposable(tcfg, raw)
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.from_config(c.run.mesh)
  key = jax.random.PRNGKey(c.seed)
  data = batch(jax.random.fold_in(key, 3), tcfg, c.n_samples)
  spe = c.n_samples // c.batch_size
  sched = optax.exponential_decay(c.lr, c.lr_decay_epochs * spe, c.lr_decay, staircase=True)
  opt = optax.adam(sched)
  state = train.init_state(l3d.init(jax.random.fold_in(key, 0), params, c.l3d), opt,
                           jax.random.fold_in(key, 1))
  frozen = {"target": params, "data": data}
  if mesh is not None:  # before any restore, so a checkpoint lands on this run's mesh
    state = sharding.shard_state(mesh, state, l3d.COMPONENT_TYPES)
    frozen = sharding.replicate(mesh, frozen)
  ck = Checkpointer(workdir)
  state = ck.start(state, resume)
  save_json(os.path.join(workdir, "config.json"), c.to_dict())
  kw = dict(workdir=workdir, log_every=c.run.log_every_epochs * spe, steps_per_dispatch=spe,
            checkpoint_every=c.run.checkpoint_every_epochs * spe, checkpointer=ck)
  if c.warm_start_epochs and int(state.step) < c.warm_start_epochs * spe:
    warm = ml_collections.ConfigDict(c.l3d.to_dict())
    warm.topk = c.warm_start_topk
    state = train.fit(state, frozen, make_update(apply, warm, c.batch_size, opt, mesh),
                      total_steps=c.warm_start_epochs * spe, name="l3d-warm", **kw)
  state = train.fit(state, frozen, make_update(apply, c.l3d, c.batch_size, opt, mesh),
                    total_steps=c.epochs * spe, name="l3d", **kw)
  ck.close()
  # every process summarises on its own first device, from the target and data it drew itself
  # and a whole host copy of the state (so process 0 alone can draw the figures)
  summary = summarize(apply, params, sharding.to_host(state.params), c, tcfg, raw, data, key,
                      workdir)
  save_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def summarize(apply, params, state, c, tcfg, raw, data, key, workdir) -> dict:
  """Reconstruction error (training set and held-out: the mean of the per-batch losses, and pooled
  over all batches; on held-out also the lower bound for the pooled loss of any n_v subnetworks,
  `l3d_measures.reconstruction_bound`), P_act, per-model recovery metrics and the
  figures (subnetwork weights next to the target's; perturbation sweeps)."""
  cfg = c.l3d
  held = batch(jax.random.fold_in(key, 4), tcfg, c.n_eval)

  @jax.jit
  def loss_fn(s, p, x, k):
    _, m = l3d.batch_loss(s, p, x, k, apply=apply, cfg=cfg)
    return m["err"], m["total"]

  def losses(xs, k):
    """(mean of the per-batch losses, the loss pooled over all batches)."""
    nb = xs.shape[0] // c.batch_size
    ks = jax.random.split(k, nb)
    et = np.array([loss_fn(state, params, xs[i * c.batch_size:(i + 1) * c.batch_size], ks[i])
                   for i in range(nb)], dtype=np.float64)
    return (float(np.mean(et[:, 0] / (et[:, 1] + l3d.LOSS_EPS))),
            float(et[:, 0].sum() / (et[:, 1].sum() + l3d.LOSS_EPS)))

  out = {}
  out["recon_train"], out["recon_train_pooled"] = losses(data, jax.random.fold_in(key, 5))
  out["recon_heldout"], out["recon_heldout_pooled"] = losses(held, jax.random.fold_in(key, 6))
  n_w = sum(w.size for w in pytree.get(params, list(state["dec"])).values())
  if c.n_eval * n_w <= BOUND_MAX_ENTRIES:
    g, xg = ms.stacked_gradients(apply, params, list(state["dec"]), held,
                                 jax.random.fold_in(key, 6), cfg, c.batch_size)
    # no n_v subnetworks can beat it, top-k or not
    out["recon_bound_heldout"] = ms.energy_outside_top(g, [cfg.n_subnets])[0]
    if tcfg.data.get("group_size", 1) == 1:
      out.update(feature_direction_measures(apply, params, state, c, g, xg, held))
  pact = jax.jit(lambda s, p, x, k: l3d.p_act(apply, p, s, x, k, cfg, c.batch_size))(
      state, params, data, jax.random.fold_in(key, 7))
  out["p_act"] = [round(float(v), 5) for v in pact]
  out["dead"] = int((pact == 0).sum())
  imp = jax.jit(lambda p, e, x, k: ms.impact(apply, p, e, x, k, cfg))(
      params, state["enc"], held, jax.random.fold_in(key, 8))
  feat = ms.feature_of_subnet(imp, held)
  out["feature_of_subnet"] = [int(f) for f in feat]
  uses = held[:, feat] != 0                                          # [B, K]
  change = ms.output_change(apply, params, state["dec"], held, c.perturb_delta)
  rnd = lambda a: [round(float(v), 3) for v in a]
  out["specificity"] = rnd(ms.specificity(change, uses))
  small = ms.output_change(apply, params, state["dec"], held, c.perturb_delta / 10)
  out["specificity_small_delta"] = rnd(ms.specificity(small, uses))
  if tcfg.model.kind == "squares":  # hidden layers only: no first/last layer tensors (§3.6)
    last = f"layers/{len(params['layers']) - 1}/"
    hidden = [p for p in state["dec"] if not p.startswith(("layers/0/", last))]
    out["specificity_hidden_only"] = rnd(ms.specificity(
        ms.output_change(apply, params, state["dec"], held, c.perturb_delta, hidden), uses))
  out.update(model_metrics(tcfg, raw, params, state, pact))
  if jax.process_index() == 0:
    deltas = jnp.linspace(-4 * c.perturb_delta, 4 * c.perturb_delta, 17)
    moved = ms.perturb(apply, params, state["dec"], held, deltas)       # [D, K, B, ...]
    base = apply(params, held)
    diff = jnp.abs(moved - base[None, None]).reshape(moved.shape[:3] + (-1,)).mean(-1)
    out["figures"] = [
        figures.subnetwork_weights(
            {p: np.asarray(w) for p, w in pytree.get(params, list(state["dec"])).items()},
            subnet_blocks(state), os.path.join(workdir, "subnetworks.png")),
        figures.perturbation_sweeps(np.asarray(deltas), np.asarray(diff), np.asarray(uses),
                                    os.path.join(workdir, "perturbation_sweeps.png"))]
  logging.info("summary: %s", json.dumps(out))
  return out


def feature_direction_measures(apply, params, state, c, g, xg, held) -> dict:
  """What one subnetwork per input feature could show at best (`l3d_measures.feature_directions`:
  each feature's top gradient direction): its specificity (same measure and delta as the
  subnetworks'), and the share of each feature's gradient energy on parameters no other sample
  moves (`private_share`)."""
  fd = ms.feature_directions(g, xg, l3d.blocks(state["dec"]))
  uses = held != 0
  rnd = lambda a: [round(float(v), 3) for v in a]
  return {"feature_direction_specificity": rnd(ms.specificity(
              ms.output_change(apply, params, fd, held, c.perturb_delta), uses)),
          "feature_private_share": rnd(ms.private_share(g, xg))}


def subnet_blocks(state) -> dict:
  return {p: np.asarray(b) for p, b in l3d.blocks(state["dec"]).items()}


def tms_feature_cosines(params, state) -> dict:
  """TM1 (§3.5): per feature i, the subnetwork with the largest share of its norm on feature i's
  support {W_in[:, i], W_out[i, :], b_i}, and |cos| of that subnetwork's W_in[:, i] block (decoder
  map, and encoder map) with the target's W_in[:, i]."""
  out = {"match": [], "cos_dec": [], "cos_enc": [], "support": []}
  maps = {s: {p: np.asarray(b) for p, b in l3d.blocks(state[s]).items()} for s in ("enc", "dec")}
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


def coefficient_correlation(a: np.ndarray, state) -> float:
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


def group_assignment(state, pact, group_size: int) -> dict:
  """TM3: for each live subnetwork, the co-active input group holding most of its W_in mass."""
  w = subnet_blocks(state)["W_in"]                           # [K, h, n]
  mass = np.sum(w**2, axis=1).reshape(w.shape[0], -1, group_size).sum(-1)  # [K, groups]
  live = [k for k in range(w.shape[0]) if pact[k] > 0]
  groups = [int(np.argmax(mass[k])) for k in live]
  share = [round(float(mass[k].max() / mass[k].sum()), 4) for k in live]
  n_groups = mass.shape[1]
  return {"live": live, "group_of_live": groups, "group_share": share,
          "one_live_per_group": sorted(groups) == list(range(n_groups))}


def model_metrics(tcfg, raw, params, state, pact) -> dict:
  kind = tcfg.model.kind
  if kind == "tms" and "W_in" in state["dec"]:
    return {"tms": tms_feature_cosines(params, state)}
  if kind == "circuits":
    gs = int(tcfg.data.get("group_size", 1))
    if "W_in" not in state["dec"] or "W_out" not in state["dec"]:
      return {}
    if gs == 1:
      return {"coef_corr": coefficient_correlation(np.asarray(raw["A"]), state)}
    return {"groups": group_assignment(state, np.asarray(pact), gs)}
  return {}
