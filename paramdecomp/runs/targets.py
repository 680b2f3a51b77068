"""Training, saving and loading toy targets, through the shared training loop."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp

from paramdecomp.core import config as cfglib
from paramdecomp.core import schedules
from paramdecomp.core import train
from paramdecomp.core.checkpoint import (Checkpointer, MissingCheckpointError, load_on_one_device,
                                    save_json)
from toy_models import circuits, data, digits_mlp, modadd, resid_mlp, squares, tms

MODELS = {"tms": tms, "resid_mlp": resid_mlp, "circuits": circuits, "squares": squares,
          "modadd": modadd, "digits_mlp": digits_mlp}


def model_module(kind: str):
  if kind not in MODELS:
    raise cfglib.ConfigError("model.kind", f"{kind!r} is not one of {list(MODELS)}")
  return MODELS[kind]


def model_apply(model_cfg):
  """The model's ``apply(params, x)``; modules whose forward pass depends on the config (e.g. the
  activation) provide ``apply_for(model_cfg)``."""
  mod = model_module(model_cfg.kind)
  return mod.apply_for(model_cfg) if hasattr(mod, "apply_for") else mod.apply


def labels(mod, params, x: jax.Array) -> jax.Array:
  """Training labels: ``mod.label(x)``, or ``mod.label_from(params, x)`` for tasks stored in the
  (frozen) params, such as the circuit toys' matrix A."""
  return mod.label_from(params, x) if hasattr(mod, "label_from") else mod.label(x)


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = tms.model_config(5, 2)
  # reject_zero / group_size / random_sign: L3D's generator (data.sparse_features_nonzero)
  c.data = ml_collections.ConfigDict(dict(p=0.05, lo=0.0, hi=1.0, batch_size=1024,
                                          reject_zero=False, group_size=1, random_sign=False))
  c.optim = ml_collections.ConfigDict(dict(lr=5e-3, weight_decay=0.01, steps=5000,
                                           schedule="constant", warmup_pct=0.0, b1=0.9,
                                           b2=0.999))
  c.run = ml_collections.ConfigDict(dict(log_every=1000, steps_per_dispatch=500,
                                         checkpoint_every=0))
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  schema = default_config()
  mod = model_module(c.model.kind)
  schema.model = mod.model_config()
  if is_classifier(mod):
    schema.data = mod.data_config()
  cfglib.check_fields(c, schema)
  cfglib.positive(c, "data.batch_size", "optim.lr", "optim.steps", "run.steps_per_dispatch")
  if is_classifier(mod):
    cfglib.require(0 < c.data.train_frac <= 1, "data.train_frac",
                   f"must be in (0, 1], got {c.data.train_frac}")
  else:
    cfglib.require(0 < c.data.p <= 1, "data.p", f"must be in (0, 1], got {c.data.p}")
  cfglib.one_of(c, "optim.schedule", schedules.KINDS)


def is_classifier(mod) -> bool:
  """Classifiers train on a fixed dataset (`mod.dataset(c)`) with cross-entropy."""
  return getattr(mod, "TASK", "") == "classify"


def classifier_metrics(logits: jax.Array, y: jax.Array) -> dict:
  """Mean cross-entropy and accuracy of logits [B, K] against integer labels [B]."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return {"loss": jnp.mean(loss), "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}


def evaluate_classifier(mod, params, x, y, chunk: int = 4096) -> dict:
  """Loss and accuracy of a classifier over a whole split (chunks of `chunk` samples)."""
  apply = jax.jit(mod.apply)
  tot, n = {"loss": 0.0, "accuracy": 0.0}, x.shape[0]
  for i in range(0, n, chunk):
    m = classifier_metrics(apply(params, x[i:i + chunk]), y[i:i + chunk])
    tot = {k: tot[k] + float(m[k]) * min(chunk, n - i) for k in tot}
  return {k: v / n for k, v in tot.items()}


def batch(key, c: ml_collections.ConfigDict, batch_size: int | None = None) -> jax.Array:
  """A batch of the target's training distribution (c has 'model' and 'data' fields)."""
  n = batch_size or c.data.batch_size
  # fields absent from targets saved before they existed
  reject = c.data.get("reject_zero", False)
  group, sign = c.data.get("group_size", 1), c.data.get("random_sign", False)
  if reject or group > 1 or sign:
    return data.grouped_features(key, n, c.model.n_features, c.data.p, c.data.lo, c.data.hi,
                                 group, sign, reject_zero=reject)
  return data.sparse_features(key, n, c.model.n_features, c.data.p, c.data.lo, c.data.hi)


def train_target(c: ml_collections.ConfigDict, workdir: str, resume: bool = False) -> dict:
  """Train the target of config `c` in `workdir`, save it, and return its params."""
  validate(c)
  mod = model_module(c.model.kind)
  os.makedirs(workdir, exist_ok=True)
  params = mod.init(jax.random.PRNGKey(c.seed), c.model)
  apply = model_apply(c.model)
  frozen = {k: params.pop(k) for k in mod.FROZEN if k in params}

  if is_classifier(mod):
    ds = mod.dataset(c)
    frozen = (frozen, {"x": jnp.asarray(ds["train_x"]), "y": jnp.asarray(ds["train_y"])})
    n_train = ds["train_x"].shape[0]
    cfglib.require(c.data.batch_size <= n_train, "data.batch_size",
                   f"{c.data.batch_size} exceeds the {n_train} training samples")

    def loss_fn(p, fz, key):
      fz, d = fz
      idx = jax.random.choice(key, n_train, (c.data.batch_size,), replace=False)
      m = classifier_metrics(mod.apply({**p, **fz}, d["x"][idx]), d["y"][idx])
      return m["loss"], {"accuracy": m["accuracy"]}
  else:
    def loss_fn(p, fz, key):
      x = batch(key, c)
      full = {**p, **fz}
      return jnp.mean((apply(full, x) - labels(mod, full, x)) ** 2), {}

  sched = schedules.lr_schedule(c.optim.lr, c.optim.steps, c.optim.warmup_pct, c.optim.schedule)
  opt = optax.adamw(sched, b1=c.optim.b1, b2=c.optim.b2, weight_decay=c.optim.weight_decay)
  state = train.init_state(params, opt, jax.random.PRNGKey(c.seed + 1))
  ck = Checkpointer(workdir)
  state = ck.start(state, resume)
  save_json(os.path.join(workdir, "config.json"), c.to_dict())
  state = train.fit(state, frozen, train.make_update(loss_fn, opt), total_steps=c.optim.steps,
                    workdir=workdir, log_every=c.run.log_every,
                    steps_per_dispatch=c.run.steps_per_dispatch,
                    checkpoint_every=c.run.checkpoint_every, checkpointer=ck, name="target")
  ck.close()
  params = {**state.params, **(frozen[0] if is_classifier(mod) else frozen)}
  save_target(workdir, c, params)
  return params


def save_target(workdir: str, c: ml_collections.ConfigDict, params: dict) -> None:
  path = os.path.abspath(os.path.join(workdir, "target"))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, params, force=True)
  save_json(os.path.join(workdir, "target.json"), {
      "model": c.model.to_dict(), "data": c.data.to_dict(), "seed": c.seed})


def load_target(workdir: str) -> tuple[ml_collections.ConfigDict, dict]:
  """(config with 'model' and 'data', params) of a target saved by `train_target`."""
  meta = os.path.join(workdir, "target.json")
  path = os.path.abspath(os.path.join(workdir, "target"))
  if not (os.path.exists(meta) and os.path.isdir(path)):
    raise MissingCheckpointError(f"no trained target in {os.path.abspath(workdir)} "
                                 "(expected target.json and target/; run scripts/train_toy.py)")
  with open(meta) as f:
    c = ml_collections.ConfigDict(json.load(f))
  return c, load_on_one_device(path)
