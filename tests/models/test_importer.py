"""The weight importer: round trips per family (params -> state dict in the PyTorch naming ->
params, in memory and through .safetensors / .npz / .pt files), the PyTorch layout of every
exported matrix checked against the model's own product, and each error case."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paramdecomp.models import bert, importer, transformer

TINY = dict(vocab_size=11, max_len=6, d_model=8, n_layers=2, n_heads=2, d_mlp=12)
MODELS = {
    "bert": lambda: bert.model_config(**TINY),
    "gpt2": lambda: transformer.model_config(**TINY, mlp="gelu_tanh"),
    "llama": lambda: transformer.model_config(**TINY, norm="rmsnorm", positions="rotary",
                                              mlp="swiglu", tied=False, bias=False,
                                              n_kv_heads=1),
}


def _params(fam, seed=0):
  return _params_of(MODELS[fam](), seed)


def _params_of(c, seed=0):
  init = bert.init if c.kind == "bert" else transformer.init
  p = init(jax.random.PRNGKey(seed), c)
  # random non-trivial values everywhere (norm scales and biases are 1 / 0 at init)
  leaves, tdef = jax.tree.flatten(p)
  ks = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  return jax.tree.unflatten(tdef, [jax.random.normal(k, v.shape, v.dtype)
                                   for k, v in zip(ks, leaves)])


def _assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("fam", list(MODELS))
def test_round_trip_in_memory(fam):
  p = _params(fam)
  sd = importer.to_state_dict(p, fam)
  _assert_same(importer.to_params(sd, fam, jax.eval_shape(lambda: p)), p)
  if fam == "gpt2":   # the tied head is exported as Hugging Face's GPT2LMHeadModel has it
    np.testing.assert_array_equal(sd.pop("lm_head.weight"), sd["wte.weight"])
  n = sum(v.size for v in sd.values())
  assert n == sum(v.size for v in jax.tree.leaves(p))     # every weight once, nothing else


def test_the_exported_tensors_have_the_pytorch_names_and_layouts():
  """Linear weights [out, in] (y = W x), GPT-2 Conv1D [in, out] (y = x W), c_attn = [q|k|v]."""
  x = np.random.default_rng(0).normal(size=(8,)).astype(np.float32)
  for fam in MODELS:
    p = _params(fam)
    sd = importer.to_state_dict(p, fam)
    blk = p["params"]["block_0"]["attn"]
    q = np.einsum("d,dhk->hk", x, np.asarray(blk["query"]["kernel"])).reshape(-1)
    if fam == "bert":
      got = sd["encoder.layer.0.attention.self.query.weight"] @ x
    elif fam == "llama":
      got = sd["layers.0.self_attn.q_proj.weight"] @ x
      o = np.einsum("hk,hkd->d", q.reshape(2, 4), np.asarray(blk["out"]["kernel"]))
      np.testing.assert_allclose(sd["layers.0.self_attn.o_proj.weight"] @ q, o, rtol=1e-5)
      assert sd["layers.0.self_attn.k_proj.weight"].shape == (4, 8)     # one kv head
      np.testing.assert_allclose(sd["lm_head.weight"] @ x, x @ np.asarray(
          p["params"]["unembed"]["kernel"]), rtol=1e-5)
    else:
      got = (x @ sd["h.0.attn.c_attn.weight"])[:8]
      v = np.einsum("d,dhk->hk", x, np.asarray(blk["value"]["kernel"])).reshape(-1)
      np.testing.assert_allclose((x @ sd["h.0.attn.c_attn.weight"])[16:], v, rtol=1e-5)
      np.testing.assert_array_equal(sd["h.0.attn.c_attn.bias"][8:16],
                                    np.asarray(blk["key"]["bias"]).reshape(-1))
    np.testing.assert_allclose(got, q, rtol=1e-5)


@pytest.mark.parametrize("ext", [".safetensors", ".npz", ".pt"])
def test_round_trip_through_files_with_prefixes(ext, tmp_path):
  fam = {".safetensors": "bert", ".npz": "llama", ".pt": "gpt2"}[ext]
  pre = {"bert": "bert.", "llama": "model.", "gpt2": "transformer."}[fam]
  p = _params(fam)
  sd = {(k if k == "lm_head.weight" else pre + k): v
        for k, v in importer.to_state_dict(p, fam).items()}
  path = str(tmp_path / f"w{ext}")
  if ext == ".safetensors":
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    safetensors_numpy.save_file(sd, path)
  elif ext == ".npz":
    np.savez(path, **sd)
  else:
    torch = pytest.importorskip("torch", reason="the .pt path needs the optional torch extra")
    tsd = {k: torch.from_numpy(v.copy()) for k, v in sd.items()}
    tsd["lm_head.weight"] = tsd["transformer.wte.weight"]      # GPT-2's tied head, as HF saves
    tsd["transformer.h.0.attn.bias"] = torch.ones(1, 1, 6, 6)  # a buffer, ignored
    torch.save(tsd, path)
  _assert_same(importer.load(path, fam, p), p)


def _errors(fn):
  with pytest.raises(importer.WeightImportError) as e:
    fn()
  return str(e.value)


def test_every_problem_is_named_in_one_error():
  p = _params("bert")
  sd = importer.to_state_dict(p, "bert")
  del sd["encoder.layer.1.attention.self.key.bias"], sd["embeddings.LayerNorm.weight"]
  sd["encoder.layer.2.output.dense.weight"] = np.zeros((8, 12), np.float32)
  sd["encoder.layer.0.intermediate.dense.weight"] = sd[
      "encoder.layer.0.intermediate.dense.weight"].T                  # [8, 12]: not transposed
  sd["pooler.dense.weight"] = np.zeros((8, 8), np.float32)           # ignored: BERT's pooler
  msg = _errors(lambda: importer.to_params(sd, "bert", p))
  assert "missing (2)" in msg and "'encoder.layer.1.attention.self.key.bias'" in msg
  assert "'embeddings.LayerNorm.weight'" in msg
  assert "unexpected (1): ['encoder.layer.2.output.dense.weight']" in msg
  assert re.search(r"mis-shaped \(1\): \['encoder.layer.0.intermediate.dense.weight: \(8, 12\), "
                   r"expected \(12, 8\) for block_0/mlp/fc_in/kernel'\]", msg)
  assert "pooler" not in msg


def test_a_model_the_table_cannot_fill_and_a_broken_tie_are_errors():
  llama = _params("llama")
  sd = importer.to_state_dict(llama, "llama")
  msg = _errors(lambda: importer.to_params(sd, "gpt2", llama))
  assert "does not fill" in msg and "block_0/mlp/gate/kernel" in msg
  assert "missing" in msg and "'wte.weight'" in msg and "unexpected" in msg
  g = _params("gpt2")
  sd = importer.to_state_dict(g, "gpt2")
  sd["lm_head.weight"] = sd["wte.weight"] + 1
  assert "differs from the tensor it is tied to" in _errors(
      lambda: importer.to_params(sd, "gpt2", g))


def test_a_tied_llama_takes_lm_head_as_a_copy_and_hf_configs_map():
  c = transformer.model_config(**{**MODELS["llama"]().to_dict(), "tied": True})
  p = _params_of(c)
  sd = importer.to_state_dict(p, "llama")
  assert "lm_head.weight" in sd                              # exported as HF's state_dict has it
  _assert_same(importer.to_params(sd, "llama", p), p)
  del sd["lm_head.weight"]                                   # a safetensors file omits the copy
  _assert_same(importer.to_params(sd, "llama", p), p)
  hf = dict(model_type="llama", vocab_size=11, max_position_embeddings=6, hidden_size=8,
            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=12, rms_norm_eps=1e-5, tie_word_embeddings=False)
  fam, got = importer.config_from_hf(hf)
  assert fam == "llama" and got == transformer.model_config(
      **{**MODELS["llama"]().to_dict(), "norm_eps": 1e-5, "rope_base": 10000.0})
  with pytest.raises(ValueError, match="model_type 't5'"):
    importer.config_from_hf({"model_type": "t5"})


def test_file_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown format '.h5'"):
    importer.read_state_dict(str(tmp_path / "w.h5"))
  with pytest.raises(ValueError, match="unknown model family 'gpt3'"):
    importer.to_params({}, "gpt3", {})
  torch = pytest.importorskip("torch")
  torch.save([torch.zeros(2)], tmp_path / "list.pt")
  with pytest.raises(importer.WeightImportError, match="not a state dict"):
    importer.read_state_dict(str(tmp_path / "list.pt"))


def _hf_decoder(fam, hf_cfg):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  if fam == "gpt2":
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_cfg)).eval()
  else:
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_cfg)).eval()
  return torch, model


@pytest.mark.slow
@pytest.mark.parametrize("fam", ["gpt2", "llama"])
def test_hugging_face_decoders_import_and_agree(fam):
  """Random tiny GPT-2 / Llama (grouped-query, rotary, SwiGLU) models of transformers: their
  state dicts load through the tables and our logits equal theirs."""
  if fam == "gpt2":
    torch, model = _hf_decoder("gpt2", dict(vocab_size=50, n_positions=16, n_embd=32,
                                            n_layer=2, n_head=4, bos_token_id=0,
                                            eos_token_id=0))
    c = transformer.model_config(vocab_size=50, max_len=16, d_model=32, n_layers=2, n_heads=4,
                                 d_mlp=128, mlp="gelu_tanh")
  else:
    torch, model = _hf_decoder("llama", dict(
        vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
        rms_norm_eps=1e-6, tie_word_embeddings=False))
    c = transformer.model_config(vocab_size=50, max_len=16, d_model=32, n_layers=2, n_heads=4,
                                 n_kv_heads=2, d_head=8, d_mlp=48, norm="rmsnorm", norm_eps=1e-6,
                                 positions="rotary", mlp="swiglu", tied=False, bias=False)
  assert importer.config_from_hf(model.config.to_dict()) == (fam, c)
  template = transformer.template(c)
  params = importer.to_params(model.state_dict(), fam, template)
  ids = np.random.default_rng(0).integers(0, 50, (2, 16))
  with torch.no_grad():
    want = model(torch.from_numpy(ids)).logits.numpy()
  got = transformer.make_apply(c)(params, jnp.asarray(ids))
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-4)
