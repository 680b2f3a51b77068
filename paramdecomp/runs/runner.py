"""The one runner skeleton of every gradient-trained method (APD, L3D; SPD next).

    validate -> load the target -> plan (the method's pieces) -> mesh -> init -> shard
    -> checkpointer -> fit each phase -> summary

A method's run module supplies a `Spec`: its config schema and checks, a `plan` that turns the
config and the loaded target into what the loop needs (the target as the method sees it, the data,
the optimiser, the phases), and a `summarize`. Everything else — run directory, `config.json`,
mesh placement, checkpoints, resume, the loop, `summary.json`, reopening a saved step — is here
once.

The `run` section is the same for every method (`run_config`): `log_every` and
`checkpoint_every` in the method's `unit` ('steps', or 'epochs' for methods on a fixed data set,
where a dispatch is one epoch), `steps_per_dispatch`, and `mesh`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from typing import Any, Callable

import jax
import ml_collections
import optax

from paramdecomp.core import config as cfglib
from paramdecomp.core import pytree, sharding, train
from paramdecomp.core.checkpoint import Checkpointer, MissingCheckpointError, save_json
from paramdecomp.runs import targets

UNITS = ("steps", "epochs")


def run_config(unit: str, log_every: int, checkpoint_every: int,
               steps_per_dispatch: int = 0) -> ml_collections.ConfigDict:
  """The `run` section: log / checkpoint every so many `unit`s (0: never; a run always
  checkpoints at its end), steps per compiled dispatch (with 'epochs': 0, one epoch), the mesh."""
  if unit not in UNITS:
    raise ValueError(f"unit {unit!r} is not one of {UNITS}")
  return ml_collections.ConfigDict(dict(
      unit=unit, log_every=log_every, checkpoint_every=checkpoint_every,
      steps_per_dispatch=steps_per_dispatch, mesh=sharding.mesh_config()))


def validate_run(c: ml_collections.ConfigDict, unit: str) -> None:
  """The run section's checks (its fields are checked against the schema by `check_fields`)."""
  cfglib.require(c.run.unit == unit, "run.unit", f"this method counts in {unit!r}")
  cfglib.require(c.run.log_every >= 0 and c.run.checkpoint_every >= 0, "run.log_every",
                 "log_every and checkpoint_every must be >= 0")
  if unit == "steps":
    cfglib.positive(c, "run.steps_per_dispatch")
  else:
    cfglib.require(c.run.steps_per_dispatch == 0, "run.steps_per_dispatch",
                   "an epoch is one dispatch here; leave it 0")


@dataclasses.dataclass(frozen=True)
class Phase:
  """`total_steps` of training (from where the state is) with the method config `cfg`."""
  name: str
  cfg: ml_collections.ConfigDict
  total_steps: int


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the loop needs, as a method's `Spec.plan` builds it from the config and target.

  apply, params: the target as the method decomposes it. data: a fixed data set [N, ...]
  (None: `batch_fn` draws fresh batches). batch_fn: ``key -> x``, or ``(key, data) -> x`` with a
  data set. unit_steps: steps per unit of the run section (1, or steps per epoch).
  """
  apply: Callable
  params: Any
  cfg: ml_collections.ConfigDict
  batch_fn: Callable
  optimizer: optax.GradientTransformation
  phases: tuple[Phase, ...]
  steps_per_dispatch: int
  unit_steps: int = 1
  data: Any = None
  extra: dict = dataclasses.field(default_factory=dict)   # what the summary needs besides


@dataclasses.dataclass(frozen=True)
class Spec:
  """A method's run: its module (the method surface), config schema and checks, plan, summary.

  plan: ``(c, target, tcfg, raw_params, key) -> Plan``.
  summarize: ``(c, plan, target, tcfg, raw_params, comps, key, out_dir) -> dict``, where comps is
  the trained method state (gathered whole; on a host copy when `summary_on_host`).
  """
  name: str
  method: Any
  default_config: Callable[[], ml_collections.ConfigDict]
  validate: Callable[[ml_collections.ConfigDict], None]
  plan: Callable[..., Plan]
  summarize: Callable[..., dict]
  summary_on_host: bool = False
  # config fields a resumed run may change (dotted prefixes), besides the run section
  resumable: tuple[str, ...] = ()


def _state(spec: Spec, plan: Plan, key):
  # the batch's shape lets a method read how the model uses each weight (APD's matrix views)
  args = (key,) if plan.data is None else (key, plan.data)
  x = jax.eval_shape(plan.batch_fn, *args)
  comps = spec.method.init(jax.random.fold_in(key, 0), plan.params, plan.cfg, apply=plan.apply,
                           x=x)
  return train.init_state(comps, plan.optimizer, jax.random.fold_in(key, 1))


def _prepare(spec: Spec, c: ml_collections.ConfigDict):
  spec.validate(c)
  target, tcfg, raw = targets.load_target(c.target_dir)
  key = jax.random.PRNGKey(c.seed)
  return target, tcfg, raw, key, spec.plan(c, target, tcfg, raw, key)


class ResumeMismatchError(cfglib.ConfigError):
  """--resume with a config that differs from the run's own in a field that may not change."""


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_differences(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict,
                       free: tuple[str, ...] = ()) -> list[str]:
  """The dotted fields where configs `a` and `b` differ, but for those starting with a prefix
  in `free`, sorted."""
  fa, fb = _flat_config(a), _flat_config(b)
  return [k for k in sorted(set(fa) | set(fb))
          if fa.get(k) != fb.get(k) and not k.startswith(free)]


def _flat_config(c: ml_collections.ConfigDict) -> dict:
  return _flat(json.loads(json.dumps(c.to_dict())))   # as saved: tuples become lists


def check_resume(spec: Spec, c: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuse to resume the run in `workdir` with a config that differs from its own outside the
  fields that may change on resume (the run section, `spec.resumable`), naming the field."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise MissingCheckpointError(f"resume asked for, but {os.path.abspath(workdir)} holds no "
                                 "run (no checkpoint, no config.json)")
  old = saved_config(spec, workdir)
  may = ("run.",) + spec.resumable
  diff = config_differences(old, c, may)
  if diff:
    k, saved, now = diff[0], _flat_config(old), _flat_config(c)
    raise ResumeMismatchError(
        k, f"is {now.get(k)!r} here but the run in {workdir} was made with {saved.get(k)!r}; "
        f"a resumed run keeps its config (only {', '.join(p.rstrip('.') for p in may)} may "
        "change): start a new run in another workdir instead")


@contextlib.contextmanager
def _run_dir(workdir: str):
  """Create `workdir`; if the run fails before it has saved anything (a failed start), remove
  what this call created, so no empty run directory is left behind."""
  existed = os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  try:
    yield
  except BaseException:
    if not existed and jax.process_index() == 0:
      left = set(os.listdir(workdir)) - {"config.json"}
      ckpts = os.path.join(workdir, "checkpoints")
      if left <= {"checkpoints"} and not (os.path.isdir(ckpts) and os.listdir(ckpts)):
        shutil.rmtree(workdir, ignore_errors=True)
    raise


def run(spec: Spec, c: ml_collections.ConfigDict, workdir: str, resume: bool = False) -> dict:
  """Train `spec`'s method on the target of `c.target_dir` in `workdir` (checkpoints,
  metrics.jsonl, config.json, summary.json, figures) and return the summary.

  With `resume` the run continues from its latest checkpoint, with its own config: a config
  that differs outside the run section and `spec.resumable` is refused (`check_resume`), and
  config.json is written only by a fresh run.
  """
  target, tcfg, raw, key, plan = _prepare(spec, c)
  if resume:
    check_resume(spec, c, workdir)
  pytree.check_finite(plan.params, "target")
  mesh = sharding.from_config(c.run.mesh)
  state = _state(spec, plan, key)
  frozen = train.Frozen(plan.params, plan.data)
  if mesh is not None:  # before any restore, so a checkpoint lands on this run's mesh
    state = sharding.shard_state(mesh, state, spec.method.COMPONENT_TYPES)
    frozen = sharding.replicate(mesh, frozen)
  batch_fn = plan.batch_fn if mesh is None else sharding.constrained(mesh, plan.batch_fn)
  with _run_dir(workdir):
    ck = Checkpointer(workdir)
    state = ck.start(state, resume)
    if not resume:
      save_json(os.path.join(workdir, "config.json"), c.to_dict())
    every = lambda n: n * plan.unit_steps
    for ph in plan.phases:
      if int(state.step) >= ph.total_steps:
        continue
      update = spec.method.make_update(plan.apply, ph.cfg, batch_fn, plan.optimizer)
      state = train.fit(state, frozen, update, total_steps=ph.total_steps, workdir=workdir,
                        log_every=every(c.run.log_every),
                        steps_per_dispatch=plan.steps_per_dispatch,
                        checkpoint_every=every(c.run.checkpoint_every), checkpointer=ck,
                        name=ph.name)
    ck.close()
  comps = (sharding.to_host if spec.summary_on_host else sharding.gather)(state.params)
  summary = spec.summarize(c, plan, target, tcfg, raw, comps, key, workdir)
  save_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def with_defaults(c: ml_collections.ConfigDict, saved: dict) -> ml_collections.ConfigDict:
  """A saved config over today's defaults: fields added since the run was made get their
  defaults (unknown saved fields are kept, so `validate` names them)."""
  for k, v in saved.items():
    if isinstance(v, dict) and isinstance(c.get(k), ml_collections.ConfigDict):
      with_defaults(c[k], v)
    else:
      c[k] = v
  return c


def saved_config(spec: Spec, workdir: str) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was made with (over today's defaults)."""
  with open(os.path.join(workdir, "config.json")) as f:
    return with_defaults(spec.default_config(), json.load(f))


def restore(spec: Spec, workdir: str, step: int | None = None):
  """(config, target record, target config, raw params, key, plan, TrainState at `step`) of the
  run in `workdir` (default: its latest checkpoint), the state with its original types."""
  c = saved_config(spec, workdir)
  target, tcfg, raw, key, plan = _prepare(spec, c)
  ck = Checkpointer(workdir)
  try:
    step = ck.latest_step() if step is None else step
    state = ck.restore(_state(spec, plan, key), step)
  finally:
    ck.close()
  return c, target, tcfg, raw, key, plan, state


def analyse_checkpoint(spec: Spec, workdir: str, step: int | None = None) -> dict:
  """`spec.summarize` a saved step (default: the latest) of a run into
  <workdir>/analysis_<step>/ (summary.json and figures), e.g. while the run goes on."""
  c, target, tcfg, raw, key, plan, state = restore(spec, workdir, step)
  step = int(state.step)
  out_dir = os.path.join(workdir, f"analysis_{step}")
  os.makedirs(out_dir, exist_ok=True)
  comps = sharding.to_host(state.params) if spec.summary_on_host else state.params
  summary = spec.summarize(c, plan, target, tcfg, raw, comps, key, out_dir)
  summary["step"] = step
  save_json(os.path.join(out_dir, "summary.json"), summary)
  return summary
