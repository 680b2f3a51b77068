"""Reopening a run directory: which method made it, and its summary at a saved step."""
from __future__ import annotations

import json
import os

from paramdecomp.core.checkpoint import MissingCheckpointError
from paramdecomp.runs import decompose_apd, decompose_l3d, runner

SPECS = {s.name: s for s in (decompose_apd.SPEC, decompose_l3d.SPEC)}


def spec_of(workdir: str) -> runner.Spec:
  """The `runner.Spec` of the run in `workdir`, from its config.json (the method's section)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise MissingCheckpointError(f"{os.path.abspath(workdir)} holds no run (no config.json)")
  with open(path) as f:
    saved = json.load(f)
  names = [n for n in SPECS if isinstance(saved.get(n), dict)]
  if len(names) != 1:
    raise ValueError(f"{path} names no single method section of {sorted(SPECS)}")
  return SPECS[names[0]]


def analyse_checkpoint(workdir: str, step: int | None = None) -> dict:
  """The summary of a saved step (default: the latest) of any method's run, written to
  <workdir>/analysis_<step>/ (summary.json and figures)."""
  return runner.analyse_checkpoint(spec_of(workdir), workdir, step)
