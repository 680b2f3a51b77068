"""Training, saving and loading targets (toy and real models) through the shared loop, by their
record in the target contract (`paramdecomp.toy_models.registry`, `paramdecomp.models.registry`)."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax

from paramdecomp.core import config as cfglib
from paramdecomp.core import metrics, schedules, train
from paramdecomp.core.checkpoint import (Checkpointer, MissingCheckpointError, load_tree,
                                         save_json, save_tree)
from paramdecomp.core.config import ConfigError
from paramdecomp.core.target import Target, external
from paramdecomp.models import registry as model_registry
from paramdecomp.toy_models import registry, tms


def record_of(model_cfg: ml_collections.ConfigDict) -> Target:
  """The record of `model.kind`: a toy's or a real model's."""
  if model_cfg.kind in model_registry.TARGETS:
    return model_registry.TARGETS[model_cfg.kind]
  if model_cfg.kind in registry.TARGETS:
    return registry.TARGETS[model_cfg.kind]
  raise ConfigError("model.kind", f"{model_cfg.kind!r} is not one of "
                    f"{list(registry.TARGETS) + list(model_registry.TARGETS)}")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = tms.model_config(5, 2)
  c.data = registry.get("tms").data_config()
  c.optim = ml_collections.ConfigDict(dict(lr=5e-3, weight_decay=0.01, steps=5000,
                                           schedule="constant", warmup_pct=0.0, b1=0.9,
                                           b2=0.999))
  c.run = ml_collections.ConfigDict(dict(log_every=1000, steps_per_dispatch=500,
                                         checkpoint_every=0))
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  schema = default_config()
  target = record_of(c.model)
  schema.model, schema.data = target.model_config(), target.data_config()
  cfglib.check_fields(c, schema)
  cfglib.positive(c, "data.batch_size", "optim.lr", "optim.steps", "run.steps_per_dispatch")
  if target.is_classifier:
    cfglib.require(0 < c.data.train_frac <= 1, "data.train_frac",
                   f"must be in (0, 1], got {c.data.train_frac}")
  else:
    cfglib.require(0 < c.data.p <= 1, "data.p", f"must be in (0, 1], got {c.data.p}")
  cfglib.one_of(c, "optim.schedule", schedules.KINDS)


def evaluate_classifier(apply, params, x, y, chunk: int = 4096) -> dict:
  """Loss and accuracy of a classifier ``apply`` over a whole split (chunks of `chunk`)."""
  apply = jax.jit(apply)
  tot, n = {"loss": 0.0, "accuracy": 0.0}, x.shape[0]
  for i in range(0, n, chunk):
    m = metrics.classification(apply(params, x[i:i + chunk]), y[i:i + chunk])
    tot = {k: tot[k] + float(m[k]) * min(chunk, n - i) for k in tot}
  return {k: v / n for k, v in tot.items()}


def batch(key, c: ml_collections.ConfigDict, batch_size: int | None = None) -> jax.Array:
  """A batch of the target's training distribution (c has 'model' and 'data' fields)."""
  return record_of(c.model).batch(key, c, batch_size or c.data.batch_size)


def loss_fn(target: Target, c: ml_collections.ConfigDict, n_train: int):
  """The target's training loss ``(trainable, frozen, key) -> (loss, metrics)``."""
  apply = target.make_apply(c.model)
  if target.is_classifier:
    def loss_fn(p, fz, key):
      fz, d = fz
      idx = jax.random.choice(key, n_train, (c.data.batch_size,), replace=False)
      m = metrics.classification(apply({**p, **fz}, d["x"][idx]), d["y"][idx])
      return m["loss"], {"accuracy": m["accuracy"]}
  else:
    def loss_fn(p, fz, key):
      x = target.batch(key, c, c.data.batch_size)
      full = {**p, **fz}
      return jnp.mean((apply(full, x) - target.label(full, x)) ** 2), {}
  return loss_fn


def train_target(c: ml_collections.ConfigDict, workdir: str, resume: bool = False) -> dict:
  """Train the target of config `c` in `workdir`, save it, and return its params."""
  validate(c)
  target = record_of(c.model)
  os.makedirs(workdir, exist_ok=True)
  params = target.init(jax.random.PRNGKey(c.seed), c.model)
  frozen = {k: params.pop(k) for k in target.frozen if k in params}
  n_train = 0
  if target.is_classifier:
    ds = target.dataset(c)
    frozen = (frozen, {"x": jnp.asarray(ds["train_x"]), "y": jnp.asarray(ds["train_y"])})
    n_train = ds["train_x"].shape[0]
    cfglib.require(c.data.batch_size <= n_train, "data.batch_size",
                   f"{c.data.batch_size} exceeds the {n_train} training samples")
  sched = schedules.lr_schedule(c.optim.lr, c.optim.steps, c.optim.warmup_pct, c.optim.schedule)
  opt = optax.adamw(sched, b1=c.optim.b1, b2=c.optim.b2, weight_decay=c.optim.weight_decay)
  state = train.init_state(params, opt, jax.random.PRNGKey(c.seed + 1))
  ck = Checkpointer(workdir)
  state = ck.start(state, resume)
  save_json(os.path.join(workdir, "config.json"), c.to_dict())
  update = train.make_update(loss_fn(target, c, n_train), opt)
  state = train.fit(state, frozen, update, total_steps=c.optim.steps, workdir=workdir,
                    log_every=c.run.log_every, steps_per_dispatch=c.run.steps_per_dispatch,
                    checkpoint_every=c.run.checkpoint_every, checkpointer=ck, name="target")
  ck.close()
  params = {**state.params, **(frozen[0] if target.is_classifier else frozen)}
  save_target(workdir, c, params)
  return params


def report(c: ml_collections.ConfigDict, params: dict) -> tuple[dict, list[str]]:
  """(target_report.json's content, warnings) of a trained target: a classifier's train and
  test loss and accuracy, or the record's own report (empty when it has none)."""
  target = record_of(c.model)
  if target.is_classifier:
    ds, apply = target.dataset(c), target.make_apply(c.model)
    return {split: evaluate_classifier(apply, params, ds[f"{split}_x"], ds[f"{split}_y"])
            for split in ("train", "test")}, []
  if target.report is None:
    return {}, []
  return target.report(c, params, jax.random.PRNGKey(c.seed + 2))


def save_target(workdir: str, c: ml_collections.ConfigDict, params: dict) -> None:
  save_tree(os.path.join(workdir, "target"), params)
  save_json(os.path.join(workdir, "target.json"), {
      "model": c.model.to_dict(), "data": c.data.to_dict(), "seed": c.seed})


def save_external_target(workdir: str, params: dict, apply: str, batch: str) -> None:
  """Save a user's trained model as a target the runners take (`target_dir`): its params (any
  pytree of arrays) and the module paths ('package.module:name') of its ``apply(params, x)`` and
  of ``batch(key, n) -> x [n, ...]`` (the inputs to decompose on; a pure JAX function)."""
  external(apply, batch)   # both must import now, not at the first run
  os.makedirs(workdir, exist_ok=True)
  save_tree(os.path.join(workdir, "target"), params)
  save_json(os.path.join(workdir, "target.json"), {
      "model": {"kind": "external", "apply": apply, "batch": batch}, "data": {}, "seed": 0})


def load_target(workdir: str) -> tuple[Target, ml_collections.ConfigDict, dict]:
  """(record, config with 'model' and 'data', params) of a target saved by `train_target` or
  `save_external_target`."""
  meta = os.path.join(workdir, "target.json")
  path = os.path.abspath(os.path.join(workdir, "target"))
  if not (os.path.exists(meta) and os.path.isdir(path)):
    raise MissingCheckpointError(f"no trained target in {os.path.abspath(workdir)} "
                                 "(expected target.json and target/; run scripts/train_toy.py, "
                                 "or save your own with save_external_target)")
  with open(meta) as f:
    c = ml_collections.ConfigDict(json.load(f))
  if c.model.kind == "external":
    record = external(c.model.apply, c.model.batch)
  else:
    record = record_of(c.model)
  return record, c, load_tree(path)
