"""The one pytree save / load (core.checkpoint) and the one classifier metric (core.metrics)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paramdecomp.core import checkpoint, metrics


def test_save_tree_round_trip_on_one_device_or_host(tmp_path):
  tree = {"a": np.arange(6.0).reshape(2, 3), "n": np.int32(3),
          "b": {"c": jnp.full(4, 0.25, jnp.float32)}, "layers.0->layers.1": np.eye(2)}
  path = str(tmp_path / "t")
  checkpoint.save_tree(path, tree)
  dev = checkpoint.load_tree(path)
  host = checkpoint.load_tree(path, as_numpy=True)
  for got in (dev, host):
    assert jax.tree.structure(got) == jax.tree.structure(tree)
    for want, leaf in zip(jax.tree.leaves(tree), jax.tree.leaves(got)):
      assert leaf.dtype == np.asarray(want).dtype
      np.testing.assert_array_equal(leaf, want)
  assert all(isinstance(v, jax.Array) and v.devices() == {jax.local_devices()[0]}
             for v in jax.tree.leaves(dev))
  assert all(isinstance(v, np.ndarray) for v in jax.tree.leaves(host))
  like = {"a": jax.ShapeDtypeStruct((2, 3), jnp.float32), "n": np.int32(0),
          "b": {"c": jnp.zeros(4, jnp.float32)}, "layers.0->layers.1": np.zeros((2, 2))}
  cast = checkpoint.load_tree(path, like)
  assert cast["a"].dtype == jnp.float32 and float(cast["a"][1, 2]) == 5.0
  checkpoint.save_tree(path, {"x": np.ones(2)})                 # replaces what was there
  assert set(checkpoint.load_tree(path)) == {"x"}
  with pytest.raises(checkpoint.MissingCheckpointError):
    checkpoint.load_tree(str(tmp_path / "nothing"))


def test_classification_against_hand_computed_values():
  logits = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.25, 0.25]]))
  y = jnp.array([0, 2, 2])
  ce = -np.log([0.7, 0.3, 0.25])
  m = metrics.classification(logits, y)
  assert float(m["loss"]) == pytest.approx(ce.mean(), rel=1e-12)
  assert float(m["accuracy"]) == pytest.approx(1 / 3, rel=1e-12)
  w = jnp.array([1.0, 1.0, 0.0])                         # a padded sample weighs nothing
  m = metrics.classification(logits, y, w)
  assert float(m["loss"]) == pytest.approx(ce[:2].mean(), rel=1e-12)
  assert float(m["accuracy"]) == pytest.approx(0.5, rel=1e-12)
  m = metrics.classification(logits, y, jnp.zeros(3))
  assert float(m["loss"]) == 0.0 and float(m["accuracy"]) == 0.0
