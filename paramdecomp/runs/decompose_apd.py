"""APD on a saved target (docs/methods/apd.md): the method's pieces for the one runner."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from paramdecomp.core import config as cfglib
from paramdecomp.core import schedules, sharding
from paramdecomp.methods import apd
from paramdecomp.runs import apd_summary, runner


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.target_dir = ""          # run directory of scripts/train_toy.py
  c.method = "apd"
  c.apd = apd.default_config()
  c.batch_size = 2048        # the data distribution is the target's training distribution
  c.optim = ml_collections.ConfigDict(dict(lr=3e-2, steps=20_000, schedule="constant",
                                           warmup_pct=0.05, halflife=1000.0))
  c.run = runner.run_config("steps", log_every=1000, checkpoint_every=5000,
                            steps_per_dispatch=100)
  # the model's analyses after training (ResidMLP, §1.9): samples per test, component cutoff
  c.analysis = ml_collections.ConfigDict(dict(n_samples=20_000, batch_size=256, cutoff=0.1))
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  cfglib.check_fields(c, default_config())
  cfglib.one_of(c, "method", ("apd",))
  with cfglib.section("apd"):
    apd.validate(c.apd)
  cfglib.one_of(c, "optim.schedule", schedules.KINDS)
  cfglib.positive(c, "batch_size", "optim.lr", "optim.steps")
  runner.validate_run(c, "steps")
  cfglib.require(bool(c.target_dir), "target_dir", "is empty; name a scripts/train_toy.py run")
  cfglib.positive(c, "analysis.n_samples", "analysis.batch_size")
  sharding.validate_mesh(c, c.apd.C, f"C={c.apd.C} components")


def optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optax.adam(schedules.lr_schedule(c.optim.lr, c.optim.steps, c.optim.warmup_pct,
                                          c.optim.schedule, c.optim.halflife))


def plan(c, target, tcfg, raw, key) -> runner.Plan:
  """A target with a `batch` is decomposed on fresh batches; a classifier (a fixed `dataset`)
  on batches drawn from its training inputs, held on device as the run's data."""
  del key
  apply, params = target.decomposable(tcfg.model, raw)
  data, batch_fn = None, lambda k: target.batch(k, tcfg, c.batch_size)
  if target.is_classifier:
    data = jnp.asarray(target.dataset(tcfg)["train_x"])
    # with replacement only when the batch is larger than the training split
    replace = c.batch_size > data.shape[0]
    batch_fn = lambda k, d: d[jax.random.choice(k, d.shape[0], (c.batch_size,), replace=replace)]
  return runner.Plan(
      apply=apply, params=params, cfg=c.apd, batch_fn=batch_fn, optimizer=optimizer(c),
      phases=(runner.Phase("apd", c.apd, c.optim.steps),),
      steps_per_dispatch=c.run.steps_per_dispatch, data=data)


# a resumed run may run longer and be analysed differently, nothing else
# the summary runs on a host copy of the state (whole on every process, like the target's params)
SPEC = runner.Spec("apd", apd, default_config, validate, plan, apd_summary.summarize,
                   summary_on_host=True, resumable=("optim.steps", "analysis."))


def decompose(c: ml_collections.ConfigDict, workdir: str, resume: bool = False) -> dict:
  """Decompose the target in c.target_dir; write checkpoints, metrics, summary and figures."""
  return runner.run(SPEC, c, workdir, resume)


def analyse_checkpoint(workdir: str, step: int | None = None) -> dict:
  """The summary of a saved step (default: the latest) in <workdir>/analysis_<step>/."""
  return runner.analyse_checkpoint(SPEC, workdir, step)
