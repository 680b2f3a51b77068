"""The LIB targets (modular-addition transformer, digits MLP), their sequential views, and a
small end-to-end build through scripts/build_basis.py."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paramdecomp.core import sequential
from paramdecomp.core.config import ConfigError
from paramdecomp.toy_models import digits_mlp, modadd
from paramdecomp.runs import targets as training

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from paramdecomp.configs import digits_mlp as digits_configs
from paramdecomp.configs import modadd as modadd_configs


def _attention_by_hand(params, r):
  """Full causal attention written out, read at the last position."""
  p = params["params"]
  q = jnp.einsum("tm,mhd->thd", r, p["W_Q"]["kernel"])
  k = jnp.einsum("tm,mhd->thd", r, p["W_K"]["kernel"])
  v = jnp.einsum("tm,mhd->thd", r, p["W_V"]["kernel"])
  s = jnp.einsum("thd,uhd->htu", q, k) / np.sqrt(q.shape[-1])
  s = jnp.where(jnp.tril(jnp.ones((3, 3), bool)), s, -jnp.inf)
  z = jnp.einsum("htu,uhd->thd", jax.nn.softmax(s, -1), v)
  return r + jnp.einsum("thd,hdm->tm", z, p["W_O"]["kernel"])


def test_modadd_data_model_and_view():
  c = modadd_configs.get_config()
  c.model.update(dict(p=7, d_model=16, n_heads=2, d_head=8, d_mlp=32))
  ds = modadd.dataset(c)
  assert ds["train_x"].shape[0] + ds["test_x"].shape[0] == 49
  np.testing.assert_array_equal(ds["train_y"], (ds["train_x"][:, 0] + ds["train_x"][:, 1]) % 7)
  assert np.all(ds["train_x"][:, 2] == 7)
  params = modadd.init(jax.random.PRNGKey(0), c.model)
  params = jax.tree.map(lambda a: a + 0.1, params)        # nonzero biases
  x = jnp.asarray(ds["test_x"][:5])
  seq = modadd.sequential_view(c.model)
  assert seq.names == modadd.NODES
  np.testing.assert_allclose(sequential.apply(seq, params, x), modadd.apply(params, x),
                             rtol=1e-10)
  r = seq.input_fn(params, x)
  for b in range(2):
    np.testing.assert_allclose(seq.layers[0](params, r[b], 1.0),
                               _attention_by_hand(params, r[b])[-1], rtol=1e-10)


def test_digits_view_and_config_checks(tmp_path):
  c = digits_configs.get_config()
  ds = digits_mlp.dataset(c)
  assert ds["train_x"].shape == (1438, 64) and ds["test_x"].shape == (359, 64)
  assert 0 <= ds["train_x"].min() and ds["train_x"].max() <= 1
  params = digits_mlp.init(jax.random.PRNGKey(0), c.model)
  seq = digits_mlp.sequential_view(c.model)
  x = jnp.asarray(ds["test_x"][:4])
  np.testing.assert_allclose(sequential.apply(seq, params, x), digits_mlp.apply(params, x))
  c.data.train_fraction = 0.5
  with pytest.raises(ConfigError, match="did you mean 'data.train_frac'"):
    training.train_target(c, str(tmp_path))


def test_build_basis_end_to_end(tmp_path):
  target, work = str(tmp_path / "digits"), str(tmp_path / "lib")
  c = digits_configs.get_config()
  c.model.hidden = (12,)
  c.optim.steps, c.run.steps_per_dispatch, c.run.log_every = 300, 100, 0
  training.train_target(c, target)
  script = os.path.join(ROOT, "scripts", "build_basis.py")
  cmd = [sys.executable, script, f"--config={ROOT}/paramdecomp/configs/lib_digits.py",
         f"--config.target_dir={target}", f"--workdir={work}", "--config.ablation.cutoff=2",
         "--config.ablation.base=2.0"]
  subprocess.run(cmd, check=True, capture_output=True)
  with open(os.path.join(work, "summary.json")) as f:
    s = json.load(f)
  assert s["nodes"] == ["layers.0", "layers.1", "output"]
  assert set(s["edges_needed"]) == {"lib", "pca"}
  assert s["degeneracy"]["jacobian_null"]["layers.1"] >= 12 - 10   # 12 hidden, 10 logits
  assert set(s["degeneracy"]["relu_groups"]) == {"Dense_0"}
  for name in ("lib", "pca", "neuron"):
    curve = s["node_ablation"]["layers.1"][name]
    full = [r for r in curve if r["n_ablated"] == 0][0]
    assert full["accuracy"] == pytest.approx(s["target"]["test"]["accuracy"], abs=1e-6)
  for png in ("graph_lib.png", "graph_pca.png", "node_ablation_layers.0.png"):
    assert os.path.getsize(os.path.join(work, png)) > 1000
  again = subprocess.run(cmd, capture_output=True, text=True)
  assert again.returncode != 0 and "--resume" in again.stderr
  resumed = subprocess.run(cmd + ["--resume", "--config.ablation.nodes=False",
                                  "--config.ablation.edges=False"], check=True,
                           capture_output=True, text=True)
  s2 = json.loads(resumed.stdout[resumed.stdout.index("{"):])
  assert not {"gram", "basis_lib", "edges_lib"} & set(s2["timings_s"])   # loaded, not recomputed
  assert s2["basis_sizes"] == s["basis_sizes"]
  bad = subprocess.run(cmd[:-2] + ["--config.lib.formula=jacobain"], capture_output=True,
                       text=True)
  assert bad.returncode != 0 and "lib.formula" in bad.stderr


def test_dominant_frequencies_finds_a_planted_frequency():
  p = 13
  a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
  f1 = np.cos(2 * np.pi * 4 * (a + b) / p).ravel()
  f2 = (np.sin(2 * np.pi * 2 * a / p) + 0.1 * np.cos(2 * np.pi * 6 * b / p)).ravel()
  res = modadd.dominant_frequencies(np.stack([f1, f2], 1), p)
  assert res[0]["frequency"] == 4 and res[0]["share"] == pytest.approx(1.0)
  assert res[1]["frequency"] == 2 and 0.9 < res[1]["share"] < 1.0
