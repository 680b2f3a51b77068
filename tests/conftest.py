"""Test session setup.

Oracle tests run in float64 (docs/methods/oracles.md §6).

Many tests compile the same programs (the same toy targets, losses and steps built afresh per
test, and the scripts run as subprocesses), so the session shares one persistent XLA compilation
cache. It lives in a directory made for this session and removed after it, so every `make test`
starts cold and no stale entry outlives the run; subprocesses inherit it through the environment.
Set JAX_COMPILATION_CACHE_DIR yourself to keep a cache between sessions.
"""
import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="paramdecomp-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
# Cache every program, not only those that take a second to compile: most here take 0.1-0.5 s.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Under `make test` (pytest-xdist, one worker per core) each worker, and every script it starts,
# is pinned to its own core. XLA sizes its thread pool by the cores it may use, so two workers
# left unpinned each spread every op over both cores and contend. (XLA_FLAGS is no lever here:
# `--xla_cpu_multi_thread_eigen=false` leaves the CPU runtime's matmuls multi-threaded, and XLA
# stops reading XLA_FLAGS at the first word without `--`, such as the folklore
# `intra_op_parallelism_threads=1`, so a device-count flag after it is silently dropped.)
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker.startswith("gw") and hasattr(os, "sched_setaffinity"):
  _cores = sorted(os.sched_getaffinity(0))
  if len(_cores) > 1:
    os.sched_setaffinity(0, {_cores[int(_worker[2:]) % len(_cores)]})

import jax  # noqa: E402  (after the environment it reads)

jax.config.update("jax_enable_x64", True)
