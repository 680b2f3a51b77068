"""The loop's manners: what `fit` checks, writes and prints, and what it leaves to the caller."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paramdecomp.core import train


def _quadratic(target=1.0):
  """A loss with a known minimum, x drawn from the key as a method's batch_fn would."""
  def loss_fn(p, frozen, key):
    x = jax.random.normal(key, (4,))
    return jnp.mean((p["w"] - target) ** 2) + 0.0 * jnp.sum(x), {}
  return loss_fn


def _fit(loss_fn, steps=20, tmp=None, **kw):
  opt = optax.sgd(0.1)
  state = train.init_state({"w": jnp.zeros(3)}, opt, jax.random.PRNGKey(0))
  return state, train.fit(state, None, train.make_update(loss_fn, opt), total_steps=steps,
                          workdir=tmp, **{"log_every": 0, "steps_per_dispatch": 5, **kw})


def test_a_numpy_batch_fn_is_refused_not_reused():
  """A batch drawn with numpy is a constant of the compiled step: refused, saying what
  batch_fn must be."""
  rng = np.random.default_rng(0)
  calls = []

  def numpy_batch(key):
    calls.append(1)
    return rng.normal(size=(8, 3))

  loss = lambda p, params, x, key: (jnp.mean((x @ p["w"]) ** 2), {})
  with pytest.raises(train.BatchFnError, match="pure JAX function of the key"):
    _fit(train.loss_on_batches(loss, numpy_batch))
  assert len(calls) == 1   # traced once: every step would have used that batch
  pair = lambda key: (jax.random.normal(key, (8, 3)), jnp.zeros(8))
  with pytest.raises(train.BatchFnError, match="returned a tuple"):
    _fit(train.loss_on_batches(loss, pair))
  empty = lambda key: jax.random.normal(key, (0, 3))
  with pytest.raises(train.BatchFnError, match="empty batch"):
    _fit(train.loss_on_batches(loss, empty))
  good = lambda key: jax.random.normal(key, (8, 3))
  _, out = _fit(train.loss_on_batches(loss, good))
  assert int(out.step) == 20


@pytest.mark.parametrize("log_every", [0, 10])
def test_a_non_finite_loss_names_its_first_step_without_logging(log_every, tmp_path):
  """The loss turns NaN at step 7: found whether or not anything is logged or saved, named
  exactly (not up to log_every steps late)."""
  def loss_fn(p, frozen, key):
    del frozen, key
    return jnp.where(p["t"] >= 7, jnp.nan, 0.0) + 0.0 * jnp.sum(p["w"]), {}

  opt = optax.sgd(0.1)
  state = train.init_state({"w": jnp.zeros(3), "t": jnp.float32(0)}, opt, jax.random.PRNGKey(0))
  update = train.make_update(loss_fn, opt, post_update=lambda p: {**p, "t": p["t"] + 1})
  with pytest.raises(train.NonFiniteLossError, match="at step 7 "):
    train.fit(state, None, update, total_steps=40, workdir=str(tmp_path) if log_every else None,
              log_every=log_every, steps_per_dispatch=5)


def test_fit_creates_its_workdir_and_logs_there(tmp_path):
  workdir = tmp_path / "not" / "yet"
  _fit(_quadratic(), tmp=str(workdir), log_every=10)
  with open(workdir / "metrics.jsonl") as f:
    assert [json.loads(line)["step"] for line in f] == [10, 20]


def test_progress_line_by_default_quiet_when_asked(capsys):
  _fit(_quadratic(), log_every=10)
  err = capsys.readouterr().err
  assert err.count("compiled and ran the first dispatch") == 1
  lines = [line for line in err.splitlines() if "step" in line and "ETA" in line]
  assert [line.split()[2] for line in lines] == ["10/20", "20/20"]
  assert lines[-1].split("ETA ")[1].startswith("0s")
  _fit(_quadratic(), log_every=10, quiet=True)
  assert capsys.readouterr().err == ""


def test_the_callers_state_survives_fit():
  state, out = _fit(_quadratic())
  np.testing.assert_array_equal(state.params["w"], jnp.zeros(3))   # not donated away
  assert int(state.step) == 0 and int(out.step) == 20
  # gradient descent on mean((w - 1)^2) over 3 entries: w_t = 1 - (1 - 0.1 * 2 / 3)^t
  np.testing.assert_allclose(out.params["w"], 1 - (1 - 0.2 / 3) ** 20, rtol=1e-6)
