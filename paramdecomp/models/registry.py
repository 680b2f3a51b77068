"""The records (`paramdecomp.core.target.Target`) of the real models that the runners train and
decompose by `model.kind`, as `paramdecomp.toy_models.registry` holds the toys'; the runners look
a kind up in both (`paramdecomp.runs.targets.record_of`)."""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from paramdecomp.core.target import Target
from paramdecomp.models import cnn, lm_data, transformer


def _lm_data_config() -> ml_collections.ConfigDict:
  """A trained LM's decomposition data: windows of its saved validation stream."""
  return ml_collections.ConfigDict(dict(tokens="", seq_len=128))


def _lm_batch(key, c, n):
  """[n, seq_len] token windows of the stream in c.data.tokens (a .npy that train_lm writes)."""
  toks = jnp.asarray(np.load(c.data.tokens))
  return lm_data.windows(key, toks, n, c.data.seq_len)[:, :-1]

TARGETS: dict[str, Target] = {t.kind: t for t in (
    Target("digits_cnn", cnn.model_config, cnn.init, lambda m: cnn.apply, cnn.data_config,
           task="classify", dataset=cnn.dataset),
    # trained by scripts/train_lm.py (its own loop), decomposed by the runners
    Target("transformer", transformer.model_config, transformer.init, transformer.make_apply,
           _lm_data_config, task="external", batch=_lm_batch),
)}
