"""LIB's truncation and bias folding must not depend on rounding noise or parameter names
(issue 12, item 16)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paramdecomp.core import sequential
from paramdecomp.methods import lib


def _mlp(names=("b0", "b1")):
  """5 -> 6 (linear) -> 3: node 1 spans only 5 of its 6 directions, so its Gram matrix has one
  exact null direction that float64 sums leave at ~1e-16 of the top eigenvalue."""
  k = jax.random.split(jax.random.PRNGKey(0), 4)
  params = {"w0": jax.random.normal(k[0], (5, 6)), names[0]: 0.3 * jnp.ones(6),
            "w1": jax.random.normal(k[1], (6, 3)), names[1]: 0.1 * jnp.ones(3)}
  layers = [lambda p, f: f @ p["w0"] + p[names[0]], lambda p, f: jnp.tanh(f @ p["w1"] + p[names[1]])]
  return params, layers, jax.random.normal(k[2], (300, 5))


@pytest.mark.parametrize("formula,size", [("pca", 6), ("jacobian", 4)])
def test_relative_truncation_drops_the_null_direction_for_every_chunk_size(formula, size):
  """The null direction's eigenvalue is rounding noise (3e-16 to 2e-15 here, depending on the
  chunk size): the reference's absolute 1e-15 keeps it for some chunk sizes (PCA: 7 directions
  at chunk 16; jacobian: 5, with C⁺ entries of 4e7 at chunk 300); relative to the top
  eigenvalue it is never kept. PCA: 5 input directions and the constant; jacobian: the 3
  outputs' directions and the constant."""
  params, layers, x = _mlp(("bias0", "bias1"))
  seq = sequential.from_functions(layers, ("in", "hidden", "out"), bias_pattern=r"bias\d")
  cfg = lib.default_config()
  cfg.formula = formula
  sizes, pinv = set(), []
  for chunk in (7, 16, 64, 300):
    cfg.chunk_size = chunk
    b = lib.build_bases(seq, params, x, cfg)[1]
    sizes.add(b.C.shape[1])
    pinv.append(np.abs(b.C_pinv).max())
  assert sizes == {size}, sizes
  assert max(pinv) < 1e2, pinv


def test_cutoff_is_relative_or_absolute():
  cfg = lib.default_config()
  lam = np.array([4.0, -2.0, 1e-3])
  np.testing.assert_allclose(lib.cutoff(lam, cfg), 4.0 * cfg.truncation_threshold)
  cfg.truncation, cfg.truncation_threshold = "absolute", 1e-15
  assert lib.cutoff(lam, cfg) == 1e-15


def test_biases_the_pattern_misses_are_refused():
  """Biases named b0, b1 are not matched by a pattern for 'bias': the layers' constants would
  pass as input-dependent; refused, naming the layer. Matched, the same model builds."""
  params, layers, x = _mlp(("b0", "b1"))
  seq = sequential.from_functions(layers, ("in", "hidden", "out"), bias_pattern=r"(.*/)?bias")
  with pytest.raises(sequential.UnfoldedBiasError, match=r"layer 0 \(in -> hidden\)"):
    lib.build_bases(seq, params, x, lib.default_config())
  ok = sequential.from_functions(layers, ("in", "hidden", "out"), bias_pattern=r"b\d")
  got = lib.build_bases(ok, params, x, lib.default_config())
  # the same basis as the model with biases under the default names
  p2, layers2, _ = _mlp(("bias0", "bias1"))
  want = lib.build_bases(sequential.from_functions(layers2, ("in", "hidden", "out"),
                                                   bias_pattern=r"bias\d"), p2, x,
                         lib.default_config())
  for a, b in zip(got, want):
    np.testing.assert_allclose(a.C, b.C, rtol=1e-10, atol=1e-12)
