"""Small helpers shared by the absl scripts."""
from __future__ import annotations

import logging as pylogging

from absl import logging


def setup_logging() -> None:
  """INFO for the toolkit's progress lines; orbax's per-save chatter only from WARNING up."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= pylogging.WARNING or "orbax" not in r.pathname)
