"""Seed sweeps in one program: the same target recipe, APD or SPD run for many seeds at once, the
seeds stacked on a leading axis and every step vmapped over them (a small toy is dispatch-bound,
so S seeds cost about as much as one). For measuring how often a recipe succeeds; the runs of
record go through the runner (`decompose_apd`, `decompose_spd`, `targets.train_target`)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from paramdecomp.core import lowrank, schedules, train
from paramdecomp.methods import apd, spd
from paramdecomp.runs import apd_summary, decompose_apd, decompose_spd, spd_summary, targets
from paramdecomp.runs.restarts import fixed_batches, fixed_loss
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


def _starts(seeds, seed_offset: int, restarts: int, first_start: int) -> list:
  """[(index of the target in the stack, key)] of every start, seed-major. The runner's keys
  (runner._state): a seed's first start is the runner's run of seed + seed_offset; start r > 0
  is keyed fold_in(key, 1000 + r). Only starts first_start..restarts-1."""
  if not 0 <= first_start < restarts:
    raise ValueError(f"need 0 <= first_start < restarts, got {first_start} and {restarts}")
  base = [jax.random.PRNGKey(s + seed_offset) for s in seeds]
  return [(i, k if r == 0 else jax.random.fold_in(k, 1000 + r))
          for i, k in enumerate(base) for r in range(first_start, restarts)]


def _of_runs(params, runs):
  """The stacked targets `params` [S, ...] repeated for the starts `runs` [R, ...]."""
  return jax.tree.map(lambda a: a[jnp.asarray([i for i, _ in runs])], params)


def _keep_lowest(rows: list[dict], n_seeds: int, restarts: int, first_start: int):
  """(per seed the row of its start with the lowest `loss_total`, with the restart fields when
  restarts > 1; the indices of those rows). `rows` are seed-major, as `_starts` orders them."""
  out, picks = [], []
  n = restarts - first_start
  for i in range(n_seeds):   # seed i's starts are i*n .. i*n + n-1
    mine = rows[i * n:(i + 1) * n]
    r = int(np.argmin([row["loss_total"] for row in mine]))
    picks.append(i * n + r)
    extra = {} if restarts == 1 else {
        "restart": first_start + r, "restart_loss": [row["loss_total"] for row in mine],
        **{f"restart_{k}": [row[k] for row in mine] for k in ("mmcs", "merged", "split")}}
    out.append({**mine[r], **extra})
  return out, picks


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
  program, and the row is the start with the lowest final loss (`restart`; every start's loss,
  MMCS, merged and split in `restart_loss`, `restart_mmcs`, `restart_merged`,
  `restart_split`): restarts chosen by APD's own objective, which needs no ground truth.
  `first_start` = F runs only starts F..R-1 (the `restart_*` lists then hold those), to add
  starts to a sweep already run: `loss_total` is measured on the same fixed batches, so kept
  starts compare across sweeps. With `save`, also writes the targets' W [S, d, n], the
  components [S, C, d, n] and their use [S, C] (of the rows' starts) to that .npz file."""
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

  runs = _starts(seeds, seed_offset, restarts, first_start)
  run_params = _of_runs(params, runs)
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
  out, picks = _keep_lowest(rows, len(seeds), restarts, first_start)
  if save:
    kept_rows = [kept[j] for j in picks]
    w, comps, use = (np.stack([np.asarray(k[j]) for k in kept_rows]) for j in range(3))
    np.savez(save, W=w, components=comps, use=use, seeds=np.asarray(seeds))
  return out


def spd_tms(tcfg, dcfg, params: dict, seeds, seed_offset: int = 0, restarts: int = 1,
            first_start: int = 0, steps: int | None = None) -> list[dict]:
  """SPD (decomposition config `dcfg`, `decompose_spd`'s schema) on each stacked TMS target of
  `params` [S, ...], every start in one vmapped program; per seed `spd_summary.tms_measures`
  (MMCS / ML2R, merged and split, the paper figures' counts), `count_*` (non-negligible
  subcomponents per weight at dcfg.analysis.negligible) and the final loss terms (`loss_` +
  term: `restarts.fixed_loss` over 20 fixed batches and mask keys). `restarts`, `first_start`
  and `seed_offset` as in `apd_tms`: a seed's first start is the runner's run of seed +
  seed_offset (`decompose_spd` on that target), and with R > 1 the row is the start of lowest
  loss. `steps`: stop after that many steps of the config's schedule (all of it by default),
  e.g. to count merges once they have settled without paying for the whole schedule."""
  steps = dcfg.optim.steps if steps is None else steps
  if not 0 <= steps <= dcfg.optim.steps:
    raise ValueError(f"steps={steps} is outside the schedule's 0..{dcfg.optim.steps}")
  target = registry.of(tcfg.model)
  apply, _ = target.decomposable(tcfg.model, jax.tree.map(lambda a: a[0], params))
  batch_fn = lambda k: target.batch(k, tcfg, dcfg.batch_size)
  cfg, opt = decompose_spd.method_config(dcfg), decompose_spd.optimizer(dcfg)
  update = spd.make_update(apply, cfg, batch_fn, opt)
  x = jax.eval_shape(batch_fn, jax.random.PRNGKey(0))
  runs = _starts(seeds, seed_offset, restarts, first_start)
  run_params = _of_runs(params, runs)
  states = stack([train.init_state(
      spd.init(jax.random.fold_in(k, 0), jax.tree.map(lambda a: a[i], params), cfg,
               apply=apply, x=x), opt, jax.random.fold_in(k, 1)) for i, k in runs])
  chunk = next(c for c in (500, 100, 20, 10, 5, 1) if steps % c == 0)
  states = run_steps(update, states, run_params, steps, chunk)
  loss = jax.jit(lambda s, p, x, k: spd.loss(s, p, x, k, apply=apply, cfg=cfg))
  rows = []
  for j, (i, _) in enumerate(runs):
    p, st = jax.tree.map(lambda a: a[i], params), jax.tree.map(lambda a: a[j], states.params)
    terms = fixed_loss(loss, st, p, batch_fn, 20)
    rows.append({"seed": seeds[i], "represented_features": int(tms.represented_features(p).sum()),
                 **spd_summary.tms_measures(p["W"], spd.subcomponents(st), dcfg),
                 **{f"count_{k}": v for k, v in spd_summary.counts(st, dcfg.analysis.negligible)
                    .items()},
                 "loss_total": terms.pop("loss"),
                 **{f"loss_{k}": v for k, v in terms.items() if "/" not in k}})
  return _keep_lowest(rows, len(seeds), restarts, first_start)[0]


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
