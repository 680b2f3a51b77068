"""Small helpers shared by the absl scripts."""
from __future__ import annotations

import contextlib
import difflib
import importlib.util
import json
import logging as pylogging
import os
import platform
import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from paramdecomp.core.checkpoint import MissingCheckpointError
from paramdecomp.core.config import ConfigError
from paramdecomp.core.pytree import NonFiniteError
from paramdecomp.core.train import BatchFnError, NonFiniteLossError


def setup_logging() -> None:
  """INFO for the toolkit's progress lines; orbax's per-save chatter only from WARNING up."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= pylogging.WARNING or "orbax" not in r.pathname)


def define_run_flags(what: str):
  """The flags every run script takes: --config (file[:variant]), --workdir, --resume."""
  config = config_flags.DEFINE_config_file("config", None, f"{what} config file[:variant].",
                                           lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
  resume = flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --workdir.")
  return config, workdir, resume


def define_distributed_flags():
  """--coordinator_address, --num_processes, --process_id for multi-host runs."""
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0; set it on every process of a multi-host run.")
  flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
  flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")


def init_distributed() -> None:
  """`jax.distributed.initialize()` when the distributed flags (or a cluster environment that jax
  detects by itself, e.g. TPU pods and SLURM, with --coordinator_address=auto) ask for it."""
  f = flags.FLAGS
  if not f.coordinator_address:
    return
  # CPU devices of different processes talk through gloo (no effect on GPU/TPU collectives).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if f.coordinator_address == "auto":
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(f.coordinator_address, f.num_processes, f.process_id)
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def run_main(run, what: str, distributed: bool = True):
  """The `main` of a run script: flags --config, --workdir, --resume (and the distributed flags),
  then ``run(config, workdir, resume=...)``, whose summary is printed as JSON. Define it at
  module level (it defines the flags)."""
  config, workdir, resume = define_run_flags(what)
  if distributed:
    define_distributed_flags()

  def main(argv):
    del argv
    setup_logging()
    if distributed:
      init_distributed()
    with library_errors():
      summary = run(config.value, workdir.value, resume=resume.value)
    print(json.dumps(summary, indent=2), flush=True)

  return main


# the library's own errors: a script prints their one-line message, not a traceback
LIBRARY_ERRORS = (ConfigError, MissingCheckpointError, FileExistsError, NonFiniteLossError,
                  BatchFnError, NonFiniteError)


@contextlib.contextmanager
def library_errors():
  """Inside a script: a library error ends the process with its message on one line (exit 1)."""
  try:
    yield
  except LIBRARY_ERRORS as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


def _load_config(spec: str):
  path, _, variant = spec.partition(":")
  mod_spec = importlib.util.spec_from_file_location("_run_config", path)
  if mod_spec is None or not os.path.exists(path):
    raise ConfigError("config", f"no config file {path!r}")
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  return mod.get_config(variant) if variant else mod.get_config()


def check_overrides(argv: list[str]) -> None:
  """Raise ConfigError (with a 'did you mean') for a --config.<field> override that names no
  field of the --config file's config: before absl parses the flags, whose own error is a long
  chained traceback."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None and "--config" in argv[:-1]:
    spec = argv[argv.index("--config") + 1]
  overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if spec is None or not overrides:
    return
  config = _load_config(spec)
  for dotted in overrides:
    node, done = config, []
    for part in dotted.split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        close = difflib.get_close_matches(part, keys, n=1)
        where = ".".join(done)
        hint = (f"did you mean {'.'.join(done + close)!r}?" if close else
                f"the fields of {where or 'the config'} are {sorted(keys)}" if keys else
                f"{where!r} is not a group of fields")
        raise ConfigError(dotted, hint, unknown=True)
      node, done = node[part], done + [part]


def run(main) -> None:
  """`absl.app.run(main)` for a run script, with misspelt --config.<field> overrides refused
  on one line first."""
  with library_errors():
    check_overrides(sys.argv[1:])
  app.run(main)


def machine_line() -> str:
  """'# jax <version>, <platform> (<device kind>), <n> cpus, <processor>' for benchmark output."""
  dev = jax.devices()[0]
  return (f"# jax {jax.__version__}, {dev.platform} ({dev.device_kind}), {os.cpu_count()} cpus, "
          f"{platform.processor() or platform.machine()}")
