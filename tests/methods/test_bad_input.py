"""Bad input gets a clear error naming what is wrong (issue 12, item 13): each of these gave a
bare Python error, or none."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paramdecomp.core import sequential
from paramdecomp.core.config import ConfigError
from paramdecomp.core.pytree import NonFiniteError
from paramdecomp.methods import apd, lib


def _apd_cfg(**kw):
  cfg = apd.default_config()
  cfg.update(kw)
  return cfg


def test_batch_topk_larger_than_c_is_refused():
  with pytest.raises(ConfigError, match=r"'topk'.*k=6.0 exceeds C=5 \(batch top-k"):
    apd.validate(_apd_cfg(C=5, topk=6.0))


def test_rank_above_the_matrix_rank_is_refused_naming_the_weight():
  params = {"W": jnp.ones((2, 5))}
  with pytest.raises(ConfigError, match=r"'m'.*'W'.*\(2, 5\), so at most 2"):
    apd.init(jax.random.PRNGKey(0), params, _apd_cfg(m=3))
  assert apd.init(jax.random.PRNGKey(0), params, _apd_cfg(m=2)).factors["W"].U.shape[-1] == 2


def test_lib_refuses_empty_or_non_finite_data():
  seq = sequential.from_functions([lambda p, f: f @ p["w"]], ("a", "b"))
  params = {"w": jnp.ones((3, 2))}
  cfg = lib.default_config()
  with pytest.raises(ValueError, match="LIB's data is empty"):
    lib.build_bases(seq, params, jnp.zeros((0, 3)), cfg)
  x = np.ones((8, 3))
  x[5, 1] = np.nan
  with pytest.raises(NonFiniteError, match="LIB data holds 1 non-finite"):
    lib.build_bases(seq, params, x, cfg)
