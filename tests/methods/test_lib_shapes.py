"""LIB on the node shapes users bring: CNN feature maps [H, W, C] and sequence logits [B, T, V]
(issue 12, item 11)."""
import jax
import jax.numpy as jnp
import numpy as np

from paramdecomp.core import metrics, sequential
from paramdecomp.methods import ablations, lib


def _conv_net(flat: bool):
  """conv 3x3 (1 -> 4 channels) + ReLU, then a 1x1 conv (4 -> 3); nodes: the image [6, 6, 1],
  the feature map [6, 6, 4] (or, with `flat`, the same as [36, 4]) and the output."""
  def conv(params, f, name):   # one sample or a batch, as a Flax layer takes them
    img = f.reshape(f.shape[:-2] + (6, 6, f.shape[-1])) if flat else f
    one = img.ndim == 3
    out = jax.lax.conv_general_dilated(img[None] if one else img, params[name]["w"], (1, 1),
                                       "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out = (out[0] if one else out) + params[name]["bias"]
    return out.reshape(out.shape[:-3] + (36, out.shape[-1])) if flat else out
  layers = [lambda p, f: jax.nn.relu(conv(p, f, "c1")), lambda p, f: conv(p, f, "c2")]
  return sequential.from_functions(layers, ("image", "features", "out"),
                                   bias_pattern=r"(.*/)?bias")


def test_feature_map_nodes_equal_their_flattened_positions():
  """A [H, W, C] node is H*W positions of C features: the same bases and edges as the user's own
  reshape to [H*W, C]."""
  k = jax.random.split(jax.random.PRNGKey(0), 5)
  params = {"c1": {"w": jax.random.normal(k[0], (3, 3, 1, 4)), "bias": 0.1 * jnp.ones(4)},
            "c2": {"w": jax.random.normal(k[1], (1, 1, 4, 3)), "bias": jnp.zeros(3)}}
  x = jax.random.normal(k[2], (40, 6, 6, 1))
  cfg = lib.default_config()
  cfg.chunk_size = 16
  maps = lib.build_bases(_conv_net(False), params, x, cfg)
  flat = lib.build_bases(_conv_net(True), params, x.reshape(40, 36, 1), cfg)
  for a, b in zip(maps, flat):
    np.testing.assert_allclose(np.abs(a.C), np.abs(b.C), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(a.Lambda, b.Lambda, rtol=1e-8, atol=1e-12)
  ea = lib.build_edges(_conv_net(False), params, x, maps, cfg)
  eb = lib.build_edges(_conv_net(True), params, x.reshape(40, 36, 1), flat, cfg)
  for a, b in zip(ea, eb):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-10)


def test_sequence_logits_score_per_sample():
  """[B, T, V] logits against [B, T] labels: each sample's mean over its positions, then the
  (weighted) mean over samples, by hand."""
  logits = jax.random.normal(jax.random.PRNGKey(1), (4, 3, 5))
  y = jnp.array([[0, 1, 2], [3, 4, 0], [1, 1, 1], [2, 0, 4]])
  w = jnp.array([1.0, 0.0, 2.0, 1.0])
  ce = -jax.nn.log_softmax(logits)[jnp.arange(4)[:, None], jnp.arange(3), y]   # [B, T]
  hit = (jnp.argmax(logits, -1) == y).astype(float)
  m = metrics.classification(logits, y, w)
  np.testing.assert_allclose(m["loss"], jnp.sum(w * ce.mean(1)) / 4, rtol=1e-12)
  np.testing.assert_allclose(m["accuracy"], jnp.sum(w * hit.mean(1)) / 4, rtol=1e-12)
  try:
    metrics.classification(logits, y[:, :2])
  except ValueError as e:
    assert "[B, ..., K]" in str(e)
  else:
    raise AssertionError("mismatched labels were accepted")


def test_node_ablation_curve_on_a_sequence_model():
  """An ablation curve of a token model with logits [B, T, V]: ablating nothing scores the model
  itself, as computed by hand."""
  k = jax.random.split(jax.random.PRNGKey(2), 3)
  params = {"E": jax.random.normal(k[0], (7, 4)), "W": {"w": jax.random.normal(k[1], (4, 7)),
                                                        "bias": jnp.zeros(7)}}
  seq = sequential.from_functions([lambda p, f: f @ p["W"]["w"] + p["W"]["bias"]],
                                  ("embed", "logits"), input_fn=lambda p, t: p["E"][t])
  tokens = jax.random.randint(k[2], (30, 5), 0, 7)
  y = (tokens + 1) % 7
  cfg = lib.default_config()
  bases = lib.build_bases(seq, params, tokens, cfg)
  curve = ablations.node_ablation_curve(seq, params, tokens, y, 0, bases[0],
                                        metrics.classification, schedule=[0])
  want = metrics.classification(params["E"][tokens] @ params["W"]["w"], y)
  np.testing.assert_allclose(curve[0]["accuracy"], want["accuracy"], rtol=1e-10)
  np.testing.assert_allclose(curve[0]["loss"], want["loss"], rtol=1e-10)
