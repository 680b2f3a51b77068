"""Hand your own model to each method (APD, L3D, LIB): a Flax linen model, an NNX model, and a
PyTorch checkpoint imported through `paramdecomp.models.importer`.

  python examples/bring_your_own_model.py                    # the three examples, short runs
  python examples/bring_your_own_model.py --checkpoint=ckpt.safetensors --hf_config=config.json

With --checkpoint (a .safetensors, .npz or .pt state dict of a BERT, GPT-2 or Llama model) and
its Hugging Face config.json, that model is the third example; without, a GPT-2-style one is
written first (by transformers from PyTorch when torch and transformers are installed, else by
us in the same naming). Inputs to decompose on are random token sequences here: pass your own
batch function in your code. Settings are for a quick look, not results (see
docs/your_own_model.md for settings that work and what they give).
"""
import json
import os
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from paramdecomp.core import lowrank, pytree, sequential, train
from paramdecomp.methods import apd, l3d, lib
from paramdecomp.models import importer, transformer

flags.DEFINE_string("checkpoint", None, "a state dict file (.safetensors, .npz, .pt)")
flags.DEFINE_string("hf_config", None, "its Hugging Face config.json")
flags.DEFINE_integer("steps", 200, "steps of APD and of L3D per model")
FLAGS = flags.FLAGS


def digits():
  from sklearn.datasets import load_digits
  d = load_digits()
  return jnp.asarray(d.data / 16.0, jnp.float32), jnp.asarray(d.target)


def fit_classifier(apply, params, x, y, steps=300):
  opt = optax.adam(3e-3)

  @jax.jit
  def step(p, o, key):
    i = jax.random.randint(key, (64,), 0, x.shape[0])
    g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        apply(p, x[i]), y[i]).mean())(p)
    u, o = opt.update(g, o)
    return optax.apply_updates(p, u), o

  o = opt.init(params)
  for k in range(steps):
    params, o = step(params, o, jax.random.PRNGKey(k))
  return params


def linen_model():
  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(10, name="out")(nn.relu(nn.Dense(32, name="hidden")(x)))

  x, y = digits()
  model = MLP()
  params = fit_classifier(model.apply, model.init(jax.random.PRNGKey(0), x[:1]), x, y)
  seq = sequential.from_functions(   # LIB's nodes: pixels -> hidden -> logits
      [lambda p, f: jax.nn.relu(f @ p["params"]["hidden"]["kernel"] + p["params"]["hidden"]["bias"]),
       lambda p, f: f @ p["params"]["out"]["kernel"] + p["params"]["out"]["bias"]],
      ("pixels", "hidden", "logits"))
  batch = lambda key, n=64: x[jax.random.randint(key, (n,), 0, x.shape[0])]
  return "linen MLP", model.apply, params, batch, (r"params/.*/kernel",), seq, x


def nnx_model():
  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.hidden, self.out = nnx.Linear(64, 32, rngs=rngs), nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
      return self.out(jax.nn.relu(self.hidden(x)))

  graphdef, state = nnx.split(MLP(nnx.Rngs(0)))
  apply = lambda p, x: nnx.merge(graphdef, p)(x)     # the pure-dict params are the pytree
  x, y = digits()
  params = fit_classifier(apply, nnx.to_pure_dict(state), x, y)
  seq = sequential.from_functions(   # nnx.Linear's leaves: kernel, bias
      [lambda p, f: jax.nn.relu(f @ p["hidden"]["kernel"] + p["hidden"]["bias"]),
       lambda p, f: f @ p["out"]["kernel"] + p["out"]["bias"]], ("pixels", "hidden", "logits"))
  batch = lambda key, n=64: x[jax.random.randint(key, (n,), 0, x.shape[0])]
  return "NNX MLP", apply, params, batch, (r".*/kernel",), seq, x


def write_gpt2_checkpoint(directory):
  """(checkpoint path, config.json path) of a small GPT-2: PyTorch's when it is installed."""
  hf = dict(model_type="gpt2", vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4,
            activation_function="gelu_new", bos_token_id=0, eos_token_id=0)
  cfg_path = os.path.join(directory, "config.json")
  with open(cfg_path, "w") as f:
    json.dump(hf, f)
  try:
    import torch
    import transformers
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf))
    path = os.path.join(directory, "ckpt.pt")
    torch.save(model.state_dict(), path)
  except ImportError:
    _, c = importer.config_from_hf(hf)
    path = os.path.join(directory, "ckpt.npz")
    np.savez(path, **importer.to_state_dict(transformer.init(jax.random.PRNGKey(0), c), "gpt2"))
  return path, cfg_path


def imported_model(checkpoint, hf_config):
  from paramdecomp.models import bert
  with open(hf_config) as f:
    family, c = importer.config_from_hf(json.load(f))
  mod = bert if family == "bert" else transformer
  params = importer.load(checkpoint, family, mod.template(c))
  t = min(c.max_len, 16)
  low = 1 if family == "bert" else 0            # keep BERT's [PAD] (0) out of random inputs
  batch = lambda key, n=16: jax.random.randint(key, (n, t), low, c.vocab_size)
  seq = None if family == "bert" else transformer.sequential_view(c)
  return (f"imported {family} ({os.path.basename(checkpoint)})", mod.make_apply(c), params,
          batch, (r"params/block_0/(attn|mlp)/.*/kernel",), seq,
          batch(jax.random.PRNGKey(99), 256))


def decompose(name, apply, params, batch, patterns, seq, data, steps):
  x = batch(jax.random.PRNGKey(1))
  seq_out = apply(params, x).ndim == 3
  cfg = apd.default_config()
  cfg.update(dict(decompose=patterns, C=8, m=4, topk=2.0, faithfulness_coeff=1e3))
  comps = apd.init(jax.random.PRNGKey(2), params, cfg, apply=apply, x=x)
  opt = optax.adam(1e-2)
  st = train.fit(train.init_state(comps, opt, jax.random.PRNGKey(3)), params,
                 apd.make_update(apply, cfg, batch, opt), total_steps=steps, workdir=None,
                 log_every=0, steps_per_dispatch=steps // 2, quiet=True)
  ws = pytree.get(params, list(st.params.factors))
  err = max(float(jnp.linalg.norm(w - lowrank.total(st.params.factors[p]).reshape(w.shape))
                  / jnp.linalg.norm(w)) for p, w in ws.items())
  print(f"{name}: APD on {len(ws)} weights, worst relative error of the summed components "
        f"{err:.3f} after {steps} steps")
  lc = l3d.default_config()
  lc.update(dict(decompose=patterns, n_subnets=4, topk=0.25, divergence="kl",
                 sequence=seq_out))
  ls = l3d.init(jax.random.PRNGKey(4), params, lc)
  st = train.fit(train.init_state(ls, opt, jax.random.PRNGKey(5)), params,
                 l3d.make_update(apply, lc, batch, opt), total_steps=steps, workdir=None,
                 log_every=0, steps_per_dispatch=steps // 2, quiet=True)
  rec, _ = l3d.batch_loss(st.params, params, x, jax.random.PRNGKey(6), apply=apply, cfg=lc)
  print(f"{name}: L3D reconstruction error {float(rec):.3f}")
  if seq is None:
    print(f"{name}: LIB needs a sequential view of the model (core.sequential); none here")
    return
  jax.config.update("jax_enable_x64", True)        # LIB sums in float64
  bases = lib.build_bases(seq, params, data[:512], lib.default_config())
  jax.config.update("jax_enable_x64", False)
  print(f"{name}: LIB basis sizes {[b.C.shape[1] for b in bases]} of "
        f"{[b.C.shape[0] for b in bases]}")


def main(argv):
  del argv
  ckpt, hf = FLAGS.checkpoint, FLAGS.hf_config
  if bool(ckpt) != bool(hf):
    raise app.UsageError("--checkpoint and --hf_config go together")
  if not ckpt:
    ckpt, hf = write_gpt2_checkpoint(tempfile.mkdtemp())
  for model in (linen_model(), nnx_model(), imported_model(ckpt, hf)):
    decompose(*model, FLAGS.steps)


if __name__ == "__main__":
  app.run(main)
