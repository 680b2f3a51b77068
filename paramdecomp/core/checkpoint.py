"""Orbax checkpointing of a whole training state (trainables, optimiser state, step, PRNG key),
and the one save / load of a plain pytree (`save_tree`, `load_tree`)."""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


class MissingCheckpointError(FileNotFoundError):
  pass


class Checkpointer:
  """A `CheckpointManager` over ``<workdir>/checkpoints`` keeping the last `max_to_keep` steps."""

  def __init__(self, workdir: str, max_to_keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self._mgr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self._mgr.latest_step()

  def save(self, step: int, state: PyTree) -> None:
    self._mgr.save(int(step), args=ocp.args.StandardSave(state), force=True)

  def restore(self, like: PyTree, step: int | None = None) -> PyTree:
    """The state saved at `step` (default: latest), with the structure and shardings of `like`."""
    step = self.latest_step() if step is None else step
    if step is None or step not in self._mgr.all_steps():
      raise MissingCheckpointError(
          f"no checkpoint{'' if step is None else f' at step {step}'} in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self._mgr.restore(step, args=ocp.args.StandardRestore(abstract))

  def start(self, state: PyTree, resume: bool) -> PyTree:
    """The state to start from: the latest checkpoint with `resume`, else `state` itself.

    A fresh start in a directory that already holds checkpoints is refused, so nothing saved is
    ever overwritten by mistake.
    """
    latest = self.latest_step()
    if resume:
      if latest is None:
        raise MissingCheckpointError(f"resume asked for, but there is no checkpoint in "
                                     f"{self.directory}")
      logging.info("resuming from step %d in %s", latest, self.directory)
      return self.restore(state)
    if latest is not None:
      raise FileExistsError(f"{os.path.dirname(self.directory)} already holds checkpoints (latest "
                            f"step {latest}); resume it (resume=True; --resume in the scripts) "
                            "or choose another workdir")
    return state

  def wait(self) -> None:
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.close()


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax warns that a run step's item directory has no metadata file of its own (the step
  directory holds it): true and harmless when the item is read directly."""
  level = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(level)


def save_tree(path: str, tree: PyTree) -> None:
  """Save a pytree of arrays (numpy or jax, any sharding) at directory `path`, replacing what is
  there; returns when it is on disk."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(path), tree, force=True)


def load_tree(path: str, like: PyTree | None = None, as_numpy: bool = False) -> PyTree:
  """A pytree saved by `save_tree` (or one step of a sharded run: ``<workdir>/checkpoints/<step>``),
  restored whole whatever mesh wrote it: as jax arrays on this process's first local
  device, or with `as_numpy` as host numpy arrays in the saved dtypes (float64 kept without
  jax_enable_x64). `like` (arrays or ShapeDtypeStructs) fixes the structure and dtypes;
  default: the saved ones (containers as dicts: `Checkpointer.restore` with a `like` state
  keeps the types). Giving every leaf its target avoids orbax's missing-sharding
  warnings."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "default")):   # a run's step directory: read its item
    path = os.path.join(path, "default")
  if not os.path.isdir(path):
    raise MissingCheckpointError(f"no checkpoint at {path}")
  one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def target(m):
    if as_numpy:
      return np.zeros(m.shape, m.dtype)   # a numpy target restores as numpy
    return jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one)
  with _quiet_orbax(), ocp.StandardCheckpointer() as ckptr:
    if like is None:
      like = ckptr.metadata(path).item_metadata
    return ckptr.restore(path, jax.tree.map(target, like))


def save_json(path: str, obj) -> None:
  """Write obj as JSON (process 0 only: every process of a multi-host run holds the same obj)."""
  if jax.process_index() != 0:
    return
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
