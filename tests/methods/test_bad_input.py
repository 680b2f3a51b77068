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


def test_a_rank_above_the_matrix_rank_runs_as_the_papers_configs_do():
  """TMS 5-2 takes m = 3 on a 2 x 5 weight (the paper's setting): allowed, and the components
  still sum to rank <= 2 matrices."""
  from paramdecomp.toy_models import tms
  params = tms.init(jax.random.PRNGKey(0), tms.model_config(5, 2))
  cfg = _apd_cfg(m=3, C=5, topk=1.0)
  state = apd.init(jax.random.PRNGKey(0), params, cfg)
  assert state.factors["W"].U.shape[-1] == 3
  mats = np.asarray(jnp.einsum("cam,cbm->cab", state.factors["W"].U, state.factors["W"].V))
  assert max(np.linalg.matrix_rank(m) for m in mats) <= 2
  value, _ = apd.loss(state, params, jnp.ones((8, 5)), None, apply=tms.apply, cfg=cfg)
  assert np.isfinite(float(value))


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


def test_an_unbatched_sample_is_named_as_such():
  """TMS takes x [B, 5]; a single sample [5] used to fail deep inside as 'expected 5, got 1'."""
  from paramdecomp.methods import l3d
  from paramdecomp.toy_models import tms
  params = tms.init(jax.random.PRNGKey(0), tms.model_config(5, 2))
  cfg = _apd_cfg()
  state = apd.init(jax.random.PRNGKey(1), params, cfg)
  one = jnp.ones(5)
  with pytest.raises(ValueError, match=r"x must be \[B, \.\.\.\].*shapes \[\(5,\)\].*unbatched"):
    apd.loss(state, params, one, None, apply=tms.apply, cfg=cfg)
  with pytest.raises(ValueError, match=r"x must be \[B, \.\.\.\]"):
    apd.attributions(tms.apply, params, state, one, cfg)
  lcfg = l3d.default_config()
  lstate = l3d.init(jax.random.PRNGKey(2), params, lcfg)
  with pytest.raises(ValueError, match=r"x must be \[B, \.\.\.\]"):
    l3d.loss(lstate, params, one, jax.random.PRNGKey(3), apply=tms.apply, cfg=lcfg)
  apd.loss(state, params, one[None], None, apply=tms.apply, cfg=_apd_cfg(topk=1.0))  # a batch of 1
