"""L3D on a saved target (docs/methods/l3d.md §3.4-3.6): the method's pieces for the one runner.

L3D trains on a fixed set of `n_samples` points in epochs (unlike APD's fresh batches): the set
travels with the target params as the step's frozen `data`, and each step draws `batch_size`
distinct points of it uniformly (i.i.d. subsets rather than the reference code's per-epoch
shuffle); one epoch = n_samples // batch_size steps = one dispatch. The learning rate decays by
`lr_decay` every `lr_decay_epochs` epochs (StepLR); the first `warm_start_epochs` epochs keep a
fraction `warm_start_topk` of the coefficients. On a `run.mesh` each step's batch and its
per-sample gradient / `jvp` work split over 'data', the subnetworks' Tucker maps (and their Adam
moments) over 'components'; the training set and the target are replicated. The summary is
computed whole in every process from a host copy of the state (`l3d_summary`).
"""
from __future__ import annotations

import jax
import ml_collections
import optax

from paramdecomp.core import config as cfglib
from paramdecomp.core import sharding
from paramdecomp.methods import l3d
from paramdecomp.runs import l3d_summary, runner

ZERO_ROWS = ("target", "reject", "keep")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.target_dir = ""            # run directory of scripts/train_toy.py
  c.target_view = ""           # a view of the target's params ('untied': TMS as TM1, §3.5)
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
  c.run = runner.run_config("epochs", log_every=50, checkpoint_every=100)
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
  runner.validate_run(c, "epochs")
  sharding.validate_mesh(c, c.l3d.n_subnets, f"l3d.n_subnets={c.l3d.n_subnets} subnetworks")


def data_config(c, tcfg) -> ml_collections.ConfigDict:
  """The target's config with its data generator as c.zero_rows asks (a copy)."""
  tcfg = ml_collections.ConfigDict(tcfg.to_dict())
  if c.zero_rows != "target":
    tcfg.data.reject_zero = c.zero_rows == "reject"
  return tcfg


def sampler(batch_size: int):
  """``(key, data [N, ...]) -> [batch_size, ...]``: distinct points of the fixed set."""
  return lambda key, data: data[jax.random.choice(key, data.shape[0], (batch_size,),
                                                  replace=False)]


def plan(c, target, tcfg, raw, key) -> runner.Plan:
  tcfg = data_config(c, tcfg)
  apply, params = target.decomposable(tcfg.model, raw, c.target_view)
  data = target.batch(jax.random.fold_in(key, 3), tcfg, c.n_samples)
  spe = c.n_samples // c.batch_size
  opt = optax.adam(optax.exponential_decay(c.lr, c.lr_decay_epochs * spe, c.lr_decay,
                                           staircase=True))
  phases = []
  if c.warm_start_epochs:
    warm = ml_collections.ConfigDict(c.l3d.to_dict())
    warm.topk = c.warm_start_topk
    phases.append(runner.Phase("l3d-warm", warm, c.warm_start_epochs * spe))
  phases.append(runner.Phase("l3d", c.l3d, c.epochs * spe))
  return runner.Plan(apply=apply, params=params, cfg=c.l3d, batch_fn=sampler(c.batch_size),
                     optimizer=opt, phases=tuple(phases), steps_per_dispatch=spe,
                     unit_steps=spe, data=data, extra={"tcfg": tcfg})


# a resumed run may run longer and be summarised differently, nothing else
SPEC = runner.Spec("l3d", l3d, default_config, validate, plan, l3d_summary.summarize,
                   summary_on_host=True, resumable=("epochs", "n_eval", "perturb_delta"))


def decompose(c: ml_collections.ConfigDict, workdir: str, resume: bool = False) -> dict:
  """Decompose the target in c.target_dir; write checkpoints, metrics, summary and figures."""
  return runner.run(SPEC, c, workdir, resume)
