"""The toy targets' records (`paramdecomp.core.target.Target`), one per `model.kind`: the only
place that knows what each toy is, so runners, benchmarks and the target trainer look a kind up
here instead of probing modules."""
from __future__ import annotations

import ml_collections

from paramdecomp.core.config import ConfigError
from paramdecomp.core.target import Target, View
from paramdecomp.toy_models import circuits, data, digits_mlp, modadd, resid_mlp, squares, tms


def _tms_report(c, params, key):
  del key
  alive = tms.represented_features(params)
  n_alive, n = int(alive.sum()), alive.shape[0]
  dead = [int(i) for i in (~alive).nonzero()[0]]
  warn = ([f"features {dead} are dead (embedding norm < 0.5): this target is a poor subject for "
           "decomposition; try another --config.seed"] if dead else [])
  return {"represented_features": n_alive, "n_features": n, "dead_features": dead}, warn


def _squares_report(c, params, key):
  del key
  rep = squares.report(squares.apply_for(c.model), params)
  warn = ([] if rep["features_learned"] == c.model.n_features else
          ["some features are not computed (RMS error >= 0.1): a poor subject for "
           "decomposition; try another --config.seed"])
  return rep, warn


def _resid_mlp_report(c, params, key):
  return resid_mlp.report(params, c.data.p, key), []


TARGETS: dict[str, Target] = {t.kind: t for t in (
    Target("tms", tms.model_config, tms.init, lambda m: tms.apply, data.features_config,
           label=lambda p, x: tms.label(x), batch=data.features_batch, frozen=("hidden",),
           views={"untied": View(tms.untie, tms.apply_untied)}, report=_tms_report),
    Target("resid_mlp", resid_mlp.model_config, resid_mlp.init, lambda m: resid_mlp.apply,
           data.features_config, label=lambda p, x: resid_mlp.label(x),
           batch=data.features_batch, frozen=("W_E",), report=_resid_mlp_report),
    Target("circuits", circuits.model_config, circuits.init, lambda m: circuits.apply,
           data.features_config, label=circuits.label_from, batch=data.features_batch,
           frozen=("A",), task_leaves=("A",)),
    Target("squares", squares.model_config, squares.init, squares.apply_for,
           data.features_config, label=lambda p, x: squares.label(x),
           batch=data.features_batch, report=_squares_report),
    Target("modadd", modadd.model_config, modadd.init, lambda m: modadd.apply,
           modadd.data_config, task="classify", dataset=modadd.dataset,
           sequential_view=modadd.sequential_view,
           relu_preactivations=modadd.relu_preactivations),
    Target("digits_mlp", digits_mlp.model_config, digits_mlp.init, lambda m: digits_mlp.apply,
           digits_mlp.data_config, task="classify", dataset=digits_mlp.dataset,
           sequential_view=digits_mlp.sequential_view,
           relu_preactivations=digits_mlp.relu_preactivations),
)}


def get(kind: str) -> Target:
  """The record of `model.kind` = kind."""
  if kind not in TARGETS:
    raise ConfigError("model.kind", f"{kind!r} is not one of {list(TARGETS)}")
  return TARGETS[kind]


def of(model_cfg: ml_collections.ConfigDict) -> Target:
  return get(model_cfg.kind)

