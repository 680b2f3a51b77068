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

# Under `make test` (pytest-xdist, one worker per core) each worker and each subprocess it starts
# runs XLA on one thread: by default every process spreads its ops over all cores, and the
# workers then contend so badly that two of them on two cores take as long as one process alone.
if os.environ.get("PYTEST_XDIST_WORKER") and "intra_op_parallelism_threads" not in os.environ.get(
    "XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                             " intra_op_parallelism_threads=1").strip()

import jax  # noqa: E402  (after the environment it reads)

jax.config.update("jax_enable_x64", True)
