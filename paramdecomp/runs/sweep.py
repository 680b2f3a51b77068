"""Seed sweeps in one program: the same target recipe or APD run for many seeds at once, the
seeds stacked on a leading axis and every step vmapped over them (a small toy is dispatch-bound,
so S seeds cost about as much as one). For measuring how often a recipe succeeds; the runs of
record go through the runner (`decompose_apd`, `targets.train_target`)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from paramdecomp.core import lowrank, schedules, train
from paramdecomp.methods import apd
from paramdecomp.runs import apd_summary, decompose_apd, targets
from paramdecomp.runs.restarts import fixed_batches
from paramdecomp.toy_models import registry, tms


def stack(trees: list):
  """The trees stacked on a new leading (seed) axis."""
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


@functools.partial(jax.jit, static_argnames=("update", "chunk"))
def _multi(states, frozen, update, chunk: int):
  """`chunk` vmapped steps in one scan (compiled once per update, chunk and shapes)."""
  return jax.lax.scan(lambda s, _: (jax.vmap(update)(s, frozen)[0], None), states, None,
                      length=chunk)[0]


def run_steps(update, states, frozen, steps: int, chunk: int = 500):
  """`steps` applications of ``update(TrainState, frozen)`` to every seed of the stacked
  `states` (with its stacked `frozen`), `chunk` steps per compiled dispatch."""
  if steps % chunk:
    raise ValueError(f"steps={steps} is not a multiple of chunk={chunk}")
  for _ in range(steps // chunk):
    states = _multi(states, frozen, update=update, chunk=chunk)
  return states


def tms_targets(c, seeds) -> dict:
  """Stacked params [S, ...] of the regression target of config `c` (model, data, optim) trained
  with each seed as `targets.train_target` trains it (AdamW, the target's loss and batches)."""
  target = registry.of(c.model)
  sched = schedules.lr_schedule(c.optim.lr, c.optim.steps, c.optim.warmup_pct, c.optim.schedule)
  opt = optax.adamw(sched, b1=c.optim.b1, b2=c.optim.b2, weight_decay=c.optim.weight_decay)
  update = train.make_update(targets.loss_fn(target, c, 0), opt)
  states = stack([train.init_state(target.init(jax.random.PRNGKey(s), c.model), opt,
                                   jax.random.PRNGKey(s + 1)) for s in seeds])
  return run_steps(update, states, stack([{} for _ in seeds]), c.optim.steps).params


def _tms_apd_inputs(tcfg, dcfg, params: dict):
  """(apply, batch_fn) of the stacked TMS targets `params` for APD config `dcfg`."""
  target = registry.of(tcfg.model)
  apply, _ = target.decomposable(tcfg.model, jax.tree.map(lambda a: a[0], params))
  return apply, lambda k: target.batch(k, tcfg, dcfg.batch_size)


def apd_tms(tcfg, dcfg, params: dict, seeds, seed_offset: int = 0,
            save: str | None = None, from_ground_truth: bool = False,
            restarts: int = 1, first_start: int = 0) -> list[dict]:
  """APD (decomposition config `dcfg`, `decompose_apd`'s schema) on each stacked TMS target of
  `params` [S, ...]; per seed `apd_summary.tms_measures` (MMCS and ML2R, over all components
  and over those in use on a fresh batch; merged components and split features) and the final
  loss terms (`loss_` + term, over 20 fresh batches: runs of one target compare by them). With
  `from_ground_truth` every run starts at the target's ground-truth decomposition
  (`tms.ground_truth_factors`; the spares at 1e-3 of the random init, so they can move) instead
  of the random init: where such a run ends shows whether the clean answer is a minimum the
  random starts miss. With `restarts` = R > 1, each target is decomposed from R random starts
  (the first the usual one, the others keyed fold_in(key, 1000 + r)), all in the same vmapped
  program, and the row is the start with the lowest final loss (`restart`; every start's loss
  and MMCS in `restart_loss` and `restart_mmcs`): restarts chosen by APD's own objective, which
  needs no ground truth. `first_start` = F runs only starts F..R-1 (`restart_loss` and
  `restart_mmcs` then list those), to add starts to a sweep already run: `loss_total` is
  measured on the same fixed batches, so kept starts compare across sweeps. With `save`, also
  writes the targets' W [S, d, n], the components [S, C, d, n] and their use [S, C] (of the
  rows' starts) to that .npz file."""
  if not 0 <= first_start < restarts:
    raise ValueError(f"need 0 <= first_start < restarts, got {first_start} and {restarts}")
  apply, batch_fn = _tms_apd_inputs(tcfg, dcfg, params)
  opt = decompose_apd.optimizer(dcfg)
  update = apd.make_update(apply, dcfg.apd, batch_fn, opt)
  x = batch_fn(jax.random.PRNGKey(0))

  def start(k, p):
    st = apd.init(jax.random.fold_in(k, 0), p, dcfg.apd, apply=apply, x=x)
    if from_ground_truth:
      gt = tms.ground_truth_factors(p["W"], dcfg.apd.C, dcfg.apd.m)
      n = tcfg.model.n_features
      rand = st.factors["W"]
      st = apd.State({"W": jax.tree.map(lambda g, r: g.at[n:].set(1e-3 * r[n:]), gt, rand)})
    return st

  # the runner's keys (runner._state): a sweep seed's first start is the run of that seed
  base = [jax.random.PRNGKey(s + seed_offset) for s in seeds]
  runs = [(i, k if r == 0 else jax.random.fold_in(k, 1000 + r))
          for i, k in enumerate(base) for r in range(first_start, restarts)]
  target_of = [i for i, _ in runs]
  run_params = jax.tree.map(lambda a: a[jnp.asarray(target_of)], params)
  states = stack([train.init_state(start(k, jax.tree.map(lambda a: a[i], params)), opt,
                                   jax.random.fold_in(k, 1))
                  for i, k in runs])
  states = run_steps(update, states, run_params, dcfg.optim.steps)
  use_fn = jax.jit(lambda st, p, x: apd.component_use(apply, p, st, x, dcfg.apd))
  x_eval = batch_fn(jax.random.PRNGKey(1))
  xs_loss = fixed_batches(batch_fn, 20)
  rows, kept = [], []
  for j, (i, _) in enumerate(runs):
    p, st = jax.tree.map(lambda a: a[i], params), jax.tree.map(lambda a: a[j], states.params)
    use = use_fn(st, p, x_eval)
    comps = lowrank.components(st.factors["W"])
    kept.append((p["W"], comps, use))
    terms = apd_summary.loss_terms(apply, p, dcfg.apd, xs_loss, st.factors)
    rows.append({"seed": seeds[i], "represented_features": int(tms.represented_features(p).sum()),
                 **apd_summary.tms_measures(p["W"], comps, use),
                 **{f"loss_{k}": v for k, v in terms.items()}})
  out, kept_rows = [], []
  n = restarts - first_start
  for i in range(len(seeds)):   # runs are seed-major: seed i's starts are i*n .. i*n + n-1
    mine = rows[i * n:(i + 1) * n]
    r = int(np.argmin([row["loss_total"] for row in mine]))
    kept_rows.append(kept[i * n + r])
    extra = {} if restarts == 1 else {"restart": first_start + r,
                                      "restart_loss": [row["loss_total"] for row in mine],
                                      "restart_mmcs": [row["mmcs"] for row in mine]}
    out.append({**mine[r], **extra})
  if save:
    w, comps, use = (np.stack([np.asarray(k[j]) for k in kept_rows]) for j in range(3))
    np.savez(save, W=w, components=comps, use=use, seeds=np.asarray(seeds))
  return out


def apd_tms_merge_costs(tcfg, dcfg, params: dict, seeds, n_pairs: int,
                        n_batches: int = 20) -> list[dict]:
  """`apd_summary.merge_costs` on each stacked TMS target of `params` [S, ...] with the APD config
  `dcfg`: per seed, the ground truth's loss terms and the rise of each for `n_pairs` feature
  pairs (all pairs if there are fewer; else drawn without replacement, the same for every
  seed), over `n_batches` training batches of dcfg.batch_size."""
  apply, batch_fn = _tms_apd_inputs(tcfg, dcfg, params)
  xs = fixed_batches(batch_fn, n_batches)
  n = tcfg.model.n_features
  pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
  if len(pairs) > n_pairs:
    pick = np.random.default_rng(0).choice(len(pairs), n_pairs, replace=False)
    pairs = [pairs[i] for i in sorted(pick)]
  return [dict(seed=s, **apd_summary.merge_costs(apply, jax.tree.map(lambda a: a[i], params),
                                                  dcfg.apd, xs, pairs))
          for i, s in enumerate(seeds)]
