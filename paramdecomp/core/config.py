"""Checking ml_collections configs against a schema of defaults, failing early and by name."""
from __future__ import annotations

import contextlib
import difflib
from typing import Any, Mapping

import ml_collections


class ConfigError(ValueError):
  """A config field that is unknown or has an invalid value; `field` is its dotted path."""

  def __init__(self, field: str, why: str, unknown: bool = False):
    self.field, self.why, self.unknown = field, why, unknown
    kind = "unknown" if unknown else "invalid"
    super().__init__(f"{kind} config field {field!r}{'; ' if unknown else ': '}{why}")


@contextlib.contextmanager
def section(name: str):
  """Prefix the field named by a ConfigError raised inside with `name.`."""
  try:
    yield
  except ConfigError as e:
    why = e.why.replace("did you mean '", f"did you mean '{name}.")
    raise ConfigError(f"{name}.{e.field}", why, e.unknown) from None


def check_fields(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict,
                 prefix: str = "") -> None:
  """Raise ConfigError naming any field of `config` that `schema` lacks (with a suggestion)."""
  for name in config.keys():
    full = f"{prefix}{name}"
    if name not in schema:
      close = difflib.get_close_matches(name, list(schema.keys()), n=1)
      hint = f"did you mean {prefix + close[0]!r}?" if close else (
          f"fields here are {sorted(schema.keys())}")
      raise ConfigError(full, hint, unknown=True)
    sub, ref = config[name], schema[name]
    if isinstance(ref, ml_collections.ConfigDict):
      if not isinstance(sub, ml_collections.ConfigDict):
        raise ConfigError(full, f"must be a group of fields, got {sub!r}")
      check_fields(sub, ref, prefix=full + ".")


def require(cond: bool, field: str, why: str) -> None:
  if not cond:
    raise ConfigError(field, why)


def one_of(config: Mapping[str, Any], field: str, choices) -> None:
  value = _lookup(config, field)
  require(value in choices, field, f"{value!r} is not one of {tuple(choices)}")


def positive(config: Mapping[str, Any], *fields: str) -> None:
  for f in fields:
    v = _lookup(config, f)
    require(isinstance(v, (int, float)) and v > 0, f, f"must be > 0, got {v!r}")


def _lookup(config, field: str):
  node = config
  for part in field.split("."):
    node = node[part]
  return node

