"""Orbax checkpointing of a whole training state (trainables, optimiser state, step, PRNG key)."""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from absl import logging
import jax
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
  """Orbax warns that a step's item directory has no metadata file of its own (the step
  directory holds it): true and harmless when an item is read directly."""
  level = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(level)


def load_on_one_device(path: str) -> PyTree:
  """Any saved pytree restored whole onto this process's first local device, whatever mesh wrote
  it: a `save_target`-style directory, or one step of a run (``<workdir>/checkpoints/<step>``;
  its item directory ``.../<step>/default`` works too). Containers come back as dicts; restore
  with `Checkpointer.restore` and a `like` state to get the original types."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "default")):
    path = os.path.join(path, "default")
  if not os.path.isdir(path):
    raise MissingCheckpointError(f"no checkpoint at {path}")
  one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  with _quiet_orbax(), ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(path).item_metadata
    like = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
    return ckptr.restore(path, like)


def save_json(path: str, obj) -> None:
  """Write obj as JSON (process 0 only: every process of a multi-host run holds the same obj)."""
  if jax.process_index() != 0:
    return
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
