"""Checking ml_collections configs against a schema of defaults, failing early and by name."""
from __future__ import annotations

import difflib
from typing import Any, Callable, Mapping

import ml_collections


class ConfigError(ValueError):
  pass


def check_fields(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict,
                 prefix: str = "") -> None:
  """Raise ConfigError naming any field of `config` that `schema` lacks (with a suggestion)."""
  for name in config.keys():
    full = f"{prefix}{name}"
    if name not in schema:
      close = difflib.get_close_matches(name, list(schema.keys()), n=1)
      hint = f"; did you mean {prefix}{close[0]!r}?" if close else ""
      raise ConfigError(f"unknown config field {full!r}{hint}")
    sub, ref = config[name], schema[name]
    if isinstance(ref, ml_collections.ConfigDict):
      if not isinstance(sub, ml_collections.ConfigDict):
        raise ConfigError(f"config field {full!r} must be a group of fields, got {sub!r}")
      check_fields(sub, ref, prefix=full + ".")


def require(cond: bool, field: str, why: str) -> None:
  if not cond:
    raise ConfigError(f"invalid config field {field!r}: {why}")


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


def merge(schema: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
          validate: Callable[[ml_collections.ConfigDict], None] | None = None
          ) -> ml_collections.ConfigDict:
  """`schema` updated with `config` (after checking field names), validated and locked."""
  check_fields(config, schema)
  out = ml_collections.ConfigDict(schema.to_dict())
  out.update(config.to_dict())
  if validate is not None:
    validate(out)
  out.lock()
  return out
