"""Small helpers shared by the absl scripts."""
from __future__ import annotations

import json
import logging as pylogging
import os
import platform

from absl import flags, logging
import jax
from ml_collections import config_flags


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
    summary = run(config.value, workdir.value, resume=resume.value)
    print(json.dumps(summary, indent=2), flush=True)

  return main


def machine_line() -> str:
  """'# jax <version>, <platform> (<device kind>), <n> cpus, <processor>' for benchmark output."""
  dev = jax.devices()[0]
  return (f"# jax {jax.__version__}, {dev.platform} ({dev.device_kind}), {os.cpu_count()} cpus, "
          f"{platform.processor() or platform.machine()}")
