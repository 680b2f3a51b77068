"""Decomposing a saved toy target with a method of the toolkit: run directory, summary, figures."""
from __future__ import annotations

import json
import os

from absl import logging
import jax
import ml_collections
import numpy as np
import optax

from paramdecomp.methods import apd
from paramdecomp.runs import figures
from paramdecomp.core import lowrank, schedules, sharding, train
from paramdecomp.core import config as cfglib
from paramdecomp.core.checkpoint import Checkpointer, save_json
from paramdecomp.core.metrics import mmcs_ml2r
from toy_models import tms
from paramdecomp.runs import resid_mlp_apd
from paramdecomp.runs.targets import batch, load_target, model_module

METHODS = {"apd": apd}


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.target_dir = ""          # run directory of scripts/train_toy.py
  c.method = "apd"
  c.apd = apd.default_config()
  c.batch_size = 2048        # the data distribution is the target's training distribution
  c.optim = ml_collections.ConfigDict(dict(lr=3e-2, steps=20_000, schedule="constant",
                                           warmup_pct=0.05, halflife=1000.0))
  c.run = ml_collections.ConfigDict(dict(log_every=1000, steps_per_dispatch=100,
                                         checkpoint_every=5000))
  c.run.mesh = sharding.mesh_config()
  # the model's analyses after training (ResidMLP, §1.9): samples per test, component cutoff
  c.analysis = ml_collections.ConfigDict(dict(n_samples=20_000, batch_size=256, cutoff=0.1))
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  cfglib.check_fields(c, default_config())
  cfglib.one_of(c, "method", METHODS)
  with cfglib.section(c.method):
    METHODS[c.method].validate(c[c.method])
  cfglib.one_of(c, "optim.schedule", schedules.KINDS)
  cfglib.positive(c, "batch_size", "optim.lr", "optim.steps", "run.steps_per_dispatch")
  cfglib.require(bool(c.target_dir), "target_dir", "is empty; name a scripts/train_toy.py run")
  cfglib.positive(c, "analysis.n_samples", "analysis.batch_size")
  sharding.validate_mesh(c, c[c.method].C, f"C={c[c.method].C} components")


def optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optax.adam(schedules.lr_schedule(c.optim.lr, c.optim.steps, c.optim.warmup_pct,
                                          c.optim.schedule, c.optim.halflife))


def decompose(c: ml_collections.ConfigDict, workdir: str, resume: bool = False) -> dict:
  """Decompose the target in c.target_dir; write checkpoints, metrics, summary and figures."""
  validate(c)
  tcfg, params = load_target(c.target_dir)
  mod = model_module(tcfg.model.kind)
  method, mcfg = METHODS[c.method], c[c.method]
  os.makedirs(workdir, exist_ok=True)

  mesh = sharding.from_config(c.run.mesh)

  def batch_fn(key):
    x = batch(key, tcfg, c.batch_size)
    return x if mesh is None else sharding.constrain_batch(mesh, x)

  key = jax.random.PRNGKey(c.seed)
  comps = method.init(jax.random.fold_in(key, 0), params, mcfg)
  opt = optimizer(c)
  state = train.init_state(comps, opt, jax.random.fold_in(key, 1))
  if mesh is not None:  # before any restore, so a checkpoint lands on this run's mesh
    state, params = sharding.shard_state(mesh, state, method.COMPONENT_TYPES), sharding.replicate(mesh, params)
  ck = Checkpointer(workdir)
  state = ck.start(state, resume)
  save_json(os.path.join(workdir, "config.json"), c.to_dict())
  update = method.make_update(mod.apply, mcfg, batch_fn, opt)
  state = train.fit(state, params, update, total_steps=c.optim.steps, workdir=workdir,
                    log_every=c.run.log_every, steps_per_dispatch=c.run.steps_per_dispatch,
                    checkpoint_every=c.run.checkpoint_every, checkpointer=ck, name=c.method)
  ck.close()
  summary = summarize(mod.apply, params, sharding.gather(state.params), mcfg, batch_fn, key,
                      tcfg, workdir, c.analysis)
  save_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def _with_defaults(c: ml_collections.ConfigDict, saved: dict) -> ml_collections.ConfigDict:
  """A saved config over today's defaults: fields added since the run was made get their
  defaults (unknown saved fields are kept, so `validate` names them)."""
  for k, v in saved.items():
    if isinstance(v, dict) and isinstance(c.get(k), ml_collections.ConfigDict):
      _with_defaults(c[k], v)
    else:
      c[k] = v
  return c


def analyse_checkpoint(workdir: str, step: int | None = None) -> dict:
  """`summarize` a saved step (default: the latest) of a decomposition run into
  <workdir>/analysis_<step>/ (summary.json and figures), e.g. while the run goes on."""
  with open(os.path.join(workdir, "config.json")) as f:
    c = _with_defaults(default_config(), json.load(f))
  validate(c)
  tcfg, params = load_target(c.target_dir)
  mod = model_module(tcfg.model.kind)
  method, mcfg = METHODS[c.method], c[c.method]
  key = jax.random.PRNGKey(c.seed)
  like = method.init(jax.random.fold_in(key, 0), params, mcfg)
  opt = optimizer(c)
  ck = Checkpointer(workdir)
  step = ck.latest_step() if step is None else step
  state = ck.restore(train.init_state(like, opt, key), step)
  ck.close()
  out_dir = os.path.join(workdir, f"analysis_{step}")
  os.makedirs(out_dir, exist_ok=True)
  summary = summarize(mod.apply, params, state.params, mcfg,
                      lambda k: batch(k, tcfg, c.batch_size), key, tcfg, out_dir, c.analysis)
  summary["step"] = int(step)
  save_json(os.path.join(out_dir, "summary.json"), summary)
  return summary


def summarize(apply, params, comps, mcfg, batch_fn, key, tcfg, workdir, acfg) -> dict:
  """Final losses on a fresh batch; for TMS the MMCS/ML2R and the arrow figure, for ResidMLP
  the paper's analyses and figures (`paramdecomp.runs.resid_mlp_apd`)."""
  x = batch_fn(jax.random.fold_in(key, 2))
  total, metrics = jax.jit(lambda cp, p, x: apd.loss(cp, p, x, None, apply=apply, cfg=mcfg))(
      comps, params, x)
  out = {"loss": float(total), **{k: float(v) for k, v in metrics.items()}}
  use = jax.jit(lambda cp, p, x: apd.component_use(apply, p, cp, x, mcfg))(comps, params, x)
  out["component_use"] = [round(float(u), 5) for u in use]
  out["unused_components"] = int((use == 0).sum())
  if tcfg.model.kind == "tms":
    w = params["W"]
    mats = lowrank.components(comps["W"])
    mmcs, ml2r = mmcs_ml2r(w, mats)
    out.update(mmcs=float(mmcs), ml2r=float(ml2r),
               represented_features=int(tms.represented_features(params).sum()),
               n_features=int(tcfg.model.n_features))
    if w.shape[0] == 2 and jax.process_index() == 0:
      out["figure"] = figures.tms_arrows(
          np.asarray(w), np.asarray(mats), os.path.join(workdir, "tms_components.png"),
          title=f"APD on TMS {w.shape[1]}-{w.shape[0]}: MMCS {mmcs:.3f}, ML2R {ml2r:.3f}")
  if tcfg.model.kind == "resid_mlp":
    out.update(resid_mlp_apd.analyse(params, comps, mcfg, tcfg, jax.random.fold_in(key, 3),
                                     workdir, acfg.n_samples, acfg.batch_size, acfg.cutoff))
  logging.info("summary: %s", json.dumps(out))
  return out
