
import jax
import jax.numpy as jnp
import numpy as np

from paramdecomp.toy_models import tms
from paramdecomp.runs import targets as training

from paramdecomp.configs import tms as tms_configs


def test_tms_forward_is_the_definition():
  cfg = tms_configs.get_config("5-2-id").model
  p = tms.init(jax.random.PRNGKey(0), cfg)
  p["hidden"] = p["hidden"] * 2.0
  x = jax.random.uniform(jax.random.PRNGKey(1), (7, 5))
  want = jax.nn.relu((p["W"].T @ (2.0 * jnp.eye(2)) @ p["W"] @ x.T).T + p["b"])
  np.testing.assert_allclose(tms.apply(p, x), want, rtol=1e-6)


def test_identity_hidden_layer_stays_frozen_in_training(tmp_path):
  c = tms_configs.get_config("5-2-id")
  c.optim.steps, c.run.log_every, c.run.steps_per_dispatch = 200, 0, 100
  p = training.train_target(c, str(tmp_path))
  np.testing.assert_array_equal(p["hidden"], jnp.eye(2)[None])
  init = tms.init(jax.random.PRNGKey(c.seed), c.model)
  assert float(jnp.abs(p["W"] - init["W"]).max()) > 1e-2   # W did train
  _, c2, p2 = training.load_target(str(tmp_path))
  assert c2.model.n_hidden_layers == 1
  for k in p:
    np.testing.assert_array_equal(p[k], p2[k])


def test_represented_features_counts_live_columns():
  w = jnp.array([[1.0, 0.0, 0.3, 0.0], [0.0, 1.2, 0.3, 0.01]])
  np.testing.assert_array_equal(tms.represented_features({"W": w}), [True, True, False, False])


def test_variants_have_the_papers_shapes():
  shapes = {"5-2": (5, 2, 0), "40-10": (40, 10, 0), "40-10-id": (40, 10, 1)}
  for v, (n, h, layers) in shapes.items():
    m = tms_configs.get_config(v).model
    assert (m.n_features, m.n_hidden, m.n_hidden_layers) == (n, h, layers)
  assert tms_configs.get_config("40-10").model.bias_zero_init
