"""SPD on a saved target (docs/methods/spd.md): the method's pieces for the one runner."""
from __future__ import annotations

import ml_collections
import optax

from paramdecomp.core import config as cfglib
from paramdecomp.core import schedules, sharding
from paramdecomp.methods import spd
from paramdecomp.runs import runner, spd_summary


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.target_dir = ""          # run directory of scripts/train_toy.py
  c.method = "spd"
  c.spd = spd.default_config()
  c.batch_size = 4096        # the data distribution is the target's training distribution
  c.optim = ml_collections.ConfigDict(dict(lr=1e-3, steps=40_000, schedule="cosine",
                                           warmup_pct=0.0, halflife=1000.0))
  c.run = runner.run_config("steps", log_every=1000, checkpoint_every=5000,
                            steps_per_dispatch=100)
  # the summary: one-hot input value of the CI heatmaps, non-negligible norm (fraction of the
  # weight's largest subcomponent norm), CI above which a subcomponent counts as active; TMS:
  # the absolute cuts of the SPD paper's figures (spd_summary.figure_counts)
  c.analysis = ml_collections.ConfigDict(dict(one_hot=0.75, negligible=0.01, active=0.5,
                                              eval_batch=4096, figure_cut=0.017,
                                              figure_cut_hidden=0.009))
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  cfglib.check_fields(c, default_config())
  cfglib.one_of(c, "method", ("spd",))
  with cfglib.section("spd"):
    spd.validate(c.spd)
  cfglib.one_of(c, "optim.schedule", schedules.KINDS)
  cfglib.positive(c, "batch_size", "optim.lr", "optim.steps", "analysis.eval_batch",
                  "analysis.figure_cut", "analysis.figure_cut_hidden")
  runner.validate_run(c, "steps")
  cfglib.require(bool(c.target_dir), "target_dir", "is empty; name a scripts/train_toy.py run")
  sharding.validate_mesh(c, c.spd.C, f"C={c.spd.C} subcomponents")


def optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam (the reference's AdamW with weight decay 0) on the schedule of §0.6."""
  return optax.adam(schedules.lr_schedule(c.optim.lr, c.optim.steps, c.optim.warmup_pct,
                                          c.optim.schedule, c.optim.halflife))


def method_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """c.spd with p-annealing's length set to the run's (when annealing and left 0)."""
  m = ml_collections.ConfigDict(c.spd.to_dict())
  if m.pnorm_final and not m.anneal_steps:
    m.anneal_steps = c.optim.steps
  return m


def plan(c, target, tcfg, raw, key) -> runner.Plan:
  del key
  if target.is_classifier:
    raise cfglib.ConfigError("target_dir", "SPD runs decompose targets with a batch generator "
                             "(the toy models, external targets); classifiers are not wired yet")
  apply, params = target.decomposable(tcfg.model, raw)
  cfg = method_config(c)
  return runner.Plan(
      apply=apply, params=params, cfg=cfg,
      batch_fn=lambda k: target.batch(k, tcfg, c.batch_size), optimizer=optimizer(c),
      phases=(runner.Phase("spd", cfg, c.optim.steps),),
      steps_per_dispatch=c.run.steps_per_dispatch)


# a resumed run may run longer and be analysed differently, nothing else
SPEC = runner.Spec("spd", spd, default_config, validate, plan, spd_summary.summarize,
                   summary_on_host=True, resumable=("optim.steps", "analysis."))


def decompose(c: ml_collections.ConfigDict, workdir: str, resume: bool = False) -> dict:
  """Decompose the target in c.target_dir; write checkpoints, metrics, summary and figures."""
  return runner.run(SPEC, c, workdir, resume)


def analyse_checkpoint(workdir: str, step: int | None = None) -> dict:
  """The summary of a saved step (default: the latest) in <workdir>/analysis_<step>/."""
  return runner.analyse_checkpoint(SPEC, workdir, step)
