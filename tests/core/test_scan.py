"""Dataset scans (core.scan): sums against numpy, padding, and one compile per shape."""
import functools

import jax.numpy as jnp
import numpy as np
import pytest

from paramdecomp.core import scan

TRACES = []


def _moments(scale, args, batch, w, i):
  """Σ_b w_b (scale · a x_b, n_b) for data {x: [N, d], n: [N] int}; records each trace."""
  TRACES.append(scale)
  x, n = batch["x"], batch["n"]
  return {"s": jnp.einsum("b,bd->d", w, scale * args * x), "n": jnp.sum(w * n), "i": i * 0 + 1}


def test_dataset_sum_matches_numpy_with_a_padded_last_chunk():
  rng = np.random.default_rng(0)
  data = {"x": rng.normal(size=(23, 3)), "n": rng.integers(0, 5, size=23).astype(np.int32)}
  a = rng.normal(size=3)
  for chunk in (1, 5, 23, 100):          # 23 = 4 full chunks of 5 + 3 (2 padding copies)
    out = scan.dataset_sum(scan.bind(_moments, 2.0), a, data, chunk)
    np.testing.assert_allclose(out["s"], 2.0 * (data["x"] * a).sum(0), rtol=1e-12)
    assert float(out["n"]) == data["n"].sum()
    assert int(out["i"]) == -(-23 // min(chunk, 23))   # one term per chunk


def _compiled() -> int:
  return scan._scan_sum._cache_size()   # programs in the scan's jit cache


def test_new_args_of_the_same_shapes_do_not_recompile():
  data = {"x": np.ones((10, 2)), "n": np.ones(10, np.int32)}
  TRACES.clear()
  fn = scan.bind(_moments, 3.0)
  first = scan.dataset_sum(fn, np.ones(2), data, 4)
  traces, compiled = len(TRACES), _compiled()
  again = scan.dataset_sum(scan.bind(_moments, 3.0), np.full(2, 2.0),
                           dict(data, x=data["x"] * 5), 4)
  np.testing.assert_allclose(again["s"], 10 * first["s"])
  assert (len(TRACES), _compiled()) == (traces, compiled)   # a fresh, equal bind: not traced
  scan.dataset_sum(scan.bind(_moments, 4.0), np.ones(2), data, 4)
  scan.dataset_sum(fn, np.ones(2), data, 5)
  scan.dataset_sum(fn, np.ones(2), {"x": np.ones((12, 2)), "n": np.ones(12, np.int32)}, 4)
  assert _compiled() == compiled + 3               # new static value, chunk, data shape
  # what the cache cannot see through: a functools.partial is a new key per call
  for _ in range(2):
    scan.dataset_sum(functools.partial(_moments, 3.0), np.ones(2), data, 4)
  assert _compiled() == compiled + 5


def test_bind_equality_and_unhashable_statics():
  assert scan.bind(_moments, 1.0) == scan.bind(_moments, 1.0)
  assert hash(scan.bind(_moments, (1, 2))) == hash(scan.bind(_moments, (1, 2)))
  assert scan.bind(_moments, 1.0) != scan.bind(_moments, 2.0)
  with pytest.raises(TypeError, match="hashable"):
    scan.bind(_moments, np.ones(3))
