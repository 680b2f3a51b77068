"""The target contract: one record per model kind, holding everything a run needs to know about
the model, so that runners, benchmarks and the target trainer never probe modules or switch on
the kind.

A run's target is a saved params pytree plus its config (`model` with a `kind`, `data`); the
record of that kind supplies the configured forward pass, the labels, which leaves are frozen in
training and which a method sees, the data, and the optional views and reports.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

import jax
import ml_collections

from paramdecomp.core.config import ConfigError

PyTree = Any
Apply = Callable[[PyTree, jax.Array], jax.Array]
TASKS = ("regress", "classify", "external")


@dataclasses.dataclass(frozen=True)
class View:
  """Another parametrisation of the same function (e.g. TMS with W and Wᵀ as separate leaves):
  ``to_params(params) -> params'`` and the apply that runs params'."""
  to_params: Callable[[PyTree], PyTree]
  apply: Apply


@dataclasses.dataclass(frozen=True)
class Target:
  """A model kind.

  kind: the config's `model.kind`.
  model_config: ``(**kw) -> ConfigDict`` of the model (its defaults are the schema).
  init: ``(key, model_cfg) -> params``.
  make_apply: ``model_cfg -> apply(params, x)``: the configured forward pass (activation etc.).
  task: 'regress' (mean squared error to `label` on fresh `batch`es), 'classify'
    (cross-entropy on the fixed `dataset`), or 'external' (a user's trained model: only
    decomposed here, so it needs `make_apply` and `batch`).
  label: ``(params, x) -> y`` training labels of a regression target (params may hold the task,
    e.g. the circuit toys' matrix A).
  batch: ``(key, cfg, n) -> x [n, ...]``: n samples of the training distribution (cfg has the
    `model` and `data` sections); also the data methods decompose on.
  data_config: ``() -> ConfigDict``: the `data` section's schema.
  dataset: ``cfg -> {'train_x', 'train_y', 'test_x', 'test_y'}`` of a classifier.
  frozen: leaves kept fixed when the target is trained (identity hidden layers, the task).
  task_leaves: leaves that define the task, not the function: dropped before a method sees the
    params (apply never reads them).
  views: named `View`s of the params (a run's `target_view` picks one).
  sequential_view: ``model_cfg -> Sequential`` for LIB (None: the model has no node chain).
  relu_preactivations: ``(params, model_cfg, x) -> {name: [B, ...]}`` (degeneracy measures).
  report: ``(cfg, params, key) -> (report dict, warnings)`` after training (target_report.json).
  """
  kind: str
  model_config: Callable[..., ml_collections.ConfigDict]
  init: Callable[[jax.Array, ml_collections.ConfigDict], PyTree] | None
  make_apply: Callable[[ml_collections.ConfigDict], Apply]
  data_config: Callable[[], ml_collections.ConfigDict]
  task: str = "regress"
  label: Callable[[PyTree, jax.Array], jax.Array] | None = None
  batch: Callable[..., jax.Array] | None = None
  dataset: Callable[[ml_collections.ConfigDict], dict] | None = None
  frozen: tuple[str, ...] = ()
  task_leaves: tuple[str, ...] = ()
  views: Mapping[str, View] = dataclasses.field(default_factory=dict)
  sequential_view: Callable | None = None
  relu_preactivations: Callable | None = None
  report: Callable | None = None

  def __post_init__(self):
    if self.task not in TASKS:
      raise ValueError(f"{self.kind}: task {self.task!r} is not one of {TASKS}")
    need = {"regress": ("init", "label", "batch"), "classify": ("init", "dataset"),
            "external": ("batch",)}[self.task]
    missing = [f for f in need if getattr(self, f) is None]
    if missing:
      raise ValueError(f"{self.kind}: a {self.task} target needs {missing}")

  @property
  def is_classifier(self) -> bool:
    return self.task == "classify"

  def decomposable(self, model_cfg, params: PyTree, view: str = "") -> tuple[Apply, PyTree]:
    """(apply, params) as a method sees the target: the task leaves dropped, then the named
    view (if any) applied."""
    params = {k: v for k, v in params.items() if k not in self.task_leaves}
    if not view:
      return self.make_apply(model_cfg), params
    if view not in self.views:
      raise ConfigError("target_view", f"{view!r} is not a view of the {self.kind!r} target; "
                        f"it has {sorted(self.views) or 'none'}")
    v = self.views[view]
    return v.apply, v.to_params(params)


def import_object(spec: str) -> Any:
  """The object named by 'package.module:name' (e.g. a user's ``apply``)."""
  module, sep, name = spec.partition(":")
  if not sep or not module or not name:
    raise ConfigError("target", f"{spec!r} is not 'package.module:name'")
  try:
    obj = importlib.import_module(module)
    for part in name.split("."):
      obj = getattr(obj, part)
  except (ImportError, AttributeError) as e:
    raise ConfigError("target", f"cannot import {spec!r}: {e}") from None
  return obj


def external(apply: str, batch: str) -> Target:
  """The record of a user's model: ``apply(params, x)`` and ``batch(key, n) -> x [n, ...]`` named
  by module paths ('package.module:name'), so a saved run can find them again."""
  apply_fn, batch_fn = import_object(apply), import_object(batch)
  return Target("external", lambda **kw: ml_collections.ConfigDict(dict(kind="external", **kw)),
                None, lambda model_cfg: apply_fn, lambda: ml_collections.ConfigDict(),
                task="external", batch=lambda key, c, n: batch_fn(key, n))
