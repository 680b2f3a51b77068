"""Reopening a run directory: which method made it, and its summary at a saved step."""
from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import ml_collections

from paramdecomp.core.checkpoint import MissingCheckpointError
from paramdecomp.runs import decompose_apd, decompose_l3d, decompose_spd, runner

SPECS = {s.name: s for s in (decompose_apd.SPEC, decompose_l3d.SPEC, decompose_spd.SPEC)}


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


class Run(NamedTuple):
  """A reopened run: its config, the method's state (its own NamedTuple type) at `step`, the
  logged metrics (metrics.jsonl rows), its summary (None before it finished), and the target as
  the method saw it (`apply`, `params`)."""
  config: ml_collections.ConfigDict
  method: str
  step: int
  state: Any
  metrics: list
  summary: dict | None
  apply: Any
  params: Any


def load_run(workdir: str, step: int | None = None) -> Run:
  """Reopen the run in `workdir` (any method) at `step` (default: its latest checkpoint)."""
  spec = spec_of(workdir)
  c, _, _, _, _, plan, state = runner.restore(spec, workdir, step)
  rows, summary = [], None
  log = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(log):
    with open(log) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  if os.path.exists(os.path.join(workdir, "summary.json")):
    with open(os.path.join(workdir, "summary.json")) as f:
      summary = json.load(f)
  return Run(c, spec.name, int(state.step), state.params, rows, summary, plan.apply, plan.params)
