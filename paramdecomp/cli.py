"""Small helpers shared by the absl scripts."""
from __future__ import annotations

import logging as pylogging

from absl import logging


def setup_logging() -> None:
  """INFO for the toolkit's progress lines; orbax's per-save chatter only from WARNING up."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= pylogging.WARNING or "orbax" not in r.pathname)


def define_run_flags(what: str):
  """The flags every run script takes: --config (file[:variant]), --workdir, --resume."""
  from absl import flags
  from ml_collections import config_flags
  config = config_flags.DEFINE_config_file("config", None, f"{what} config file[:variant].",
                                           lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
  resume = flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --workdir.")
  return config, workdir, resume
