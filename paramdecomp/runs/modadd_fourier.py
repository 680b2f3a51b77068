"""The mod-add transformer's LIB report (§5.4): which Fourier frequency each basis feature
after attention carries."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from paramdecomp.methods import lib
from paramdecomp.toy_models import modadd


def feature_report(seq, params, bases, c, n_features: int = 20) -> dict:
  """Dominant Fourier frequency of the first `n_features` non-constant basis features of the
  nodes after attention (ln2.0, unembed), over all p² input pairs (§5.4)."""
  p = c.model.p
  a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
  x = jnp.asarray(np.stack([a.ravel(), b.ravel(), np.full(p * p, p)], 1), jnp.int32)
  out = {}
  for l in (1, 2):
    fa = np.asarray(lib.node_acts(seq, params, x, l))[:, 0]
    basis = bases[l]
    feats = fa @ basis.C[:, basis.n_const:basis.n_const + n_features]
    out[modadd.NODES[l]] = modadd.dominant_frequencies(feats, p)
  return out
