"""Restarts chosen by the method's own loss: several finished runs of one config that differ only
in their seed (the decomposition's start and batches), each run's final loss measured on the
same fixed batches and keys, and the lowest kept. No ground truth is used, so this is a fair
way to escape a start that fell into a worse local minimum (a merge of two features, say),
wherever another start found a better one.

  python scripts/pick_restart.py --workdirs=runs/spd_s2,runs/spd_s2_r1,runs/spd_s2_r2
"""
from __future__ import annotations

import jax
import numpy as np

from paramdecomp.core import config as cfglib
from paramdecomp.runs import analyse, runner

# config fields restarts may differ in: the seed, and how the run logs and checkpoints
FREE = ("seed", "run.")


def fixed_batches(batch_fn, n: int) -> list:
  """The n fixed batches runs are compared on: ``batch_fn(PRNGKey(1000 + i))``, i < n."""
  return [batch_fn(jax.random.PRNGKey(1000 + i)) for i in range(n)]


def fixed_loss(loss, comps, params, batch_fn, n: int) -> dict:
  """{'loss': total, **metrics} of ``loss(comps, params, x, key) -> (total, metrics)`` averaged
  over the `fixed_batches` x_i and the fixed loss keys PRNGKey(2000 + i), i < n: a stochastic
  loss (SPD's masks) is then the same function for every run it compares."""
  acc = []
  for i, x in enumerate(fixed_batches(batch_fn, n)):
    total, metrics = loss(comps, params, x, jax.random.PRNGKey(2000 + i))
    acc.append({"loss": total, **metrics})
  return {k: float(np.mean([float(a[k]) for a in acc])) for k in acc[0]}


def final_losses(workdirs: list[str], n_batches: int = 20) -> list[dict]:
  """Per run (in `workdirs` order): its workdir, step and the mean over `n_batches` fixed
  batches and loss keys (batch keys 1000 + i, loss keys 2000 + i, the same for every run) of
  its method's total loss and metrics at its latest checkpoint. Raises ConfigError naming the
  fields where a run's config differs from the first's in anything but the seed and the run
  section (the losses would not be comparable)."""
  if not workdirs:
    raise ValueError("no run directories given")
  first = None
  rows = []
  for w in workdirs:
    spec = analyse.spec_of(w)
    c, _, _, _, _, plan, state = runner.restore(spec, w)
    if first is None:
      first = (w, spec.name, c)
    elif spec.name != first[1] or runner.config_differences(first[2], c, FREE):
      diff = runner.config_differences(first[2], c, FREE) if spec.name == first[1] else ["method"]
      raise cfglib.ConfigError(diff[0], f"{w} and {first[0]} are not restarts of one config: "
                               f"they differ in {diff} (only the seed and the run section may)")
    # the last phase's config: the loss the run ended on
    loss = jax.jit(lambda s, p, x, k, m=spec.method, plan=plan: m.loss(
        s, p, x, k, apply=plan.apply, cfg=plan.phases[-1].cfg))
    data = () if plan.data is None else (plan.data,)
    mean = fixed_loss(loss, state.params, plan.params, lambda k: plan.batch_fn(k, *data),
                      n_batches)
    rows.append({"workdir": w, "seed": int(c.seed), "step": int(state.step), **mean})
  return rows


def pick(workdirs: list[str], n_batches: int = 20) -> tuple[int, list[dict]]:
  """(index of the run with the lowest final loss, `final_losses` rows)."""
  rows = final_losses(workdirs, n_batches)
  return int(np.argmin([r["loss"] for r in rows])), rows
