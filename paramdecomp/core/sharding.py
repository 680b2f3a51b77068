"""Meshes and shardings: a 'data' axis for the batch, a 'components' axis for components."""
from __future__ import annotations

import os
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from paramdecomp.core import config as cfglib
from paramdecomp.core.config import ConfigError

AXES = ("data", "components")


def mesh_config() -> ml_collections.ConfigDict:
  """A runner's `run.mesh` field: devices per axis (1 x 1: no mesh)."""
  return ml_collections.ConfigDict(dict(data=1, components=1))


def validate_mesh(c: ml_collections.ConfigDict, n_components: int, what: str) -> None:
  """Check a runner config's `run.mesh` against its `batch_size` and its `n_components`
  components (`what` names them in the error, e.g. 'C=8 components')."""
  cfglib.positive(c, "run.mesh.data", "run.mesh.components")
  m = c.run.mesh
  cfglib.require(c.batch_size % m.data == 0, "batch_size",
                 f"{c.batch_size} does not divide over run.mesh.data={m.data} devices")
  cfglib.require(n_components % m.components == 0, "run.mesh.components",
                 f"{what} do not divide over {m.components} devices")


def from_config(m: ml_collections.ConfigDict) -> Mesh | None:
  """The mesh of a `run.mesh` field, or None for a single device."""
  return make_mesh(m.data, m.components) if m.data * m.components > 1 else None


def make_mesh(data: int = 1, components: int = 1) -> Mesh:
  """A (data, components) mesh over the first data*components devices (all processes)."""
  n = data * components
  devices = jax.devices()
  if n > len(devices):
    raise ConfigError("run.mesh", f"needs {n} devices ({data} data × {components} components), "
                      f"only {len(devices)} are visible{_xla_flags_hint()}")
  return Mesh(np.asarray(devices[:n]).reshape(data, components), AXES)


def _xla_flags_hint() -> str:
  """Why a simulated device count may not have taken: XLA stops reading XLA_FLAGS at the first
  word without '--' (e.g. 'intra_op_parallelism_threads=1'), dropping every flag after it."""
  words = os.environ.get("XLA_FLAGS", "").split()
  for i, w in enumerate(words):
    if not w.startswith("--"):
      later = [v for v in words[i + 1:] if v.startswith("--xla_force_host_platform_device_count")]
      if later:
        return (f"; XLA_FLAGS has {w!r} before {later[0]!r}, and XLA reads no flag after a word "
                "without '--': put the device count first")
      return ""
  return ""


def shard_state(mesh: Mesh, tree: Any, components: tuple[type, ...]) -> Any:
  """Place `tree` on the mesh: the C axis of every node of a `components` type (the method's
  `COMPONENT_TYPES`: containers whose arrays all lead with C, e.g. APD's `Factors`, L3D's
  `Tucker`; and the optimiser moments that mirror them) over 'components', everything else
  replicated."""
  n = mesh.shape["components"]
  comp, rep = NamedSharding(mesh, P("components")), NamedSharding(mesh, P())

  def place(node):
    if isinstance(node, components):
      sizes = {a.shape[0] for a in jax.tree.leaves(node)}
      if len(sizes) != 1:
        raise ValueError(f"a {type(node).__name__}'s arrays lead with different sizes {sizes}")
      (c,) = sizes
      if c % n:
        raise ConfigError("run.mesh.components", f"C={c} components do not divide over {n} "
                          "devices")
      return put(node, comp)
    return put(node, rep)

  return jax.tree.map(place, tree, is_leaf=lambda x: isinstance(x, components))


def put(tree: Any, sharding: NamedSharding) -> Any:
  """Global arrays from host values that every process holds alike (as a seeded init does).

  Unlike `jax.device_put`, each process fills only its own devices, so this needs no
  cross-host transfer and works for multi-host meshes too.
  """
  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(one, tree)


def replicate(mesh: Mesh, tree: Any) -> Any:
  return put(tree, NamedSharding(mesh, P()))


def constrain_batch(mesh: Mesh, x: jax.Array) -> jax.Array:
  """Inside jit: split x's leading (batch) axis over 'data'."""
  if x.shape[0] % mesh.shape["data"]:
    raise ConfigError("batch_size", f"{x.shape[0]} does not divide over "
                      f"{mesh.shape['data']} data devices")
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P("data")))


def constrained(mesh: Mesh, batch_fn):
  """`batch_fn` (``key -> x`` or ``(key, data) -> x``) with its batch split over 'data'."""
  return lambda *args: constrain_batch(mesh, batch_fn(*args))


def gather(tree: Any) -> Any:
  """Every array of `tree` fully replicated (so each process can read it whole)."""
  def one(a):
    sh = getattr(a, "sharding", None)
    if sh is None or sh.is_fully_replicated:
      return a
    return jax.jit(lambda x: x, out_shardings=NamedSharding(sh.mesh, P()))(a)
  return jax.tree.map(one, tree)


def to_host(tree: Any) -> Any:
  """Every array of `tree` whole as a numpy array on every process, wherever it lies (one device,
  a mesh, a mesh over several processes): for host-side work after a sharded run."""
  return jax.tree.map(np.asarray, gather(tree))
