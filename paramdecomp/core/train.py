"""The one training loop: a jitted step scanned over several steps per dispatch.

A method supplies ``loss_fn(trainable, frozen, key) -> (loss, metrics)``; frozen holds the target
weights and anything else that is traced but not trained. The step key is
``fold_in(state.key, state.step)``, so a run is a pure function of its seed and resuming from a
checkpoint replays exactly the same keys.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from paramdecomp.core.checkpoint import Checkpointer

PyTree = Any
LossFn = Callable[[PyTree, PyTree, jax.Array], tuple[jax.Array, dict]]


class TrainState(NamedTuple):
  step: jax.Array       # int32 scalar
  params: PyTree        # trainable
  opt_state: PyTree
  key: jax.Array        # base PRNG key of the run (raw uint32[2])


class NonFiniteLossError(FloatingPointError):
  pass


def init_state(params: PyTree, optimizer: optax.GradientTransformation, key) -> TrainState:
  return TrainState(jnp.int32(0), params, optimizer.init(params), key)


class Frozen(NamedTuple):
  """What a step reads but does not train: the target's params and, for methods that train on
  a fixed data set (L3D), that set [N, ...] (traced like the params, never closed over)."""
  params: PyTree
  data: PyTree = None


def split_frozen(frozen: PyTree) -> tuple[PyTree, PyTree]:
  """(params, data) of a step's frozen argument: a `Frozen`, or the target's params alone."""
  return (frozen.params, frozen.data) if isinstance(frozen, Frozen) else (frozen, None)


def loss_on_batches(loss: Callable, batch_fn: Callable, **kw) -> LossFn:
  """``loss_fn(trainable, frozen, key)`` for a method loss ``loss(trainable, params, x, key,
  **kw)``, drawing ``x = batch_fn(k1)`` (or ``batch_fn(k1, data)`` when `frozen` is a `Frozen`
  with a data set) and passing ``k2`` on, with ``k1, k2 = split(key)``.

  `batch_fn` must be a pure JAX function of the key (``jax.random``) returning the model's input
  batch x [B, ...]: it is traced once into the compiled step, so a batch drawn with numpy or
  Python's random would be the same batch at every step; that is refused (`check_batch`).
  """

  def loss_fn(trainable, frozen, key):
    kx, kl = jax.random.split(key)
    params, data = split_frozen(frozen)
    x = batch_fn(kx) if data is None else batch_fn(kx, data)
    check_batch(x, kx)
    return loss(trainable, params, x, kl, **kw)

  return loss_fn


class BatchFnError(TypeError):
  pass


def check_batch(x, key) -> None:
  """Raise when batch_fn's output (drawn with `key`) is not a fresh batch of inputs: not an
  array (e.g. an (x, y) pair), without a batch axis, empty, or — when the key is traced, as in
  the compiled step — not depending on the key (a constant: drawn with numpy, so every step
  would reuse it)."""
  what = ("batch_fn must be a pure JAX function of the key (use jax.random with the key it is "
          "given) returning the model inputs x [B, ...]")
  if not isinstance(x, (jax.Array, np.ndarray)):
    raise BatchFnError(f"{what}; it returned a {type(x).__name__}"
                       + (" (labels are not needed: methods decompose the target's own outputs)"
                          if isinstance(x, (tuple, list)) else ""))
  if x.ndim == 0 or x.shape[0] == 0:
    raise BatchFnError(f"{what}; it returned shape {x.shape} (an empty batch or no batch axis)")
  if isinstance(key, jax.core.Tracer) and not isinstance(x, jax.core.Tracer):
    raise BatchFnError(f"{what}; its batch does not depend on the key, so every step would "
                       "train on the same batch (was it drawn with numpy?)")


def best_dispatch_seconds(step: Callable, state: PyTree, frozen: PyTree, repeats: int):
  """(best wall seconds of `repeats` calls of a (donating) ``step(state, frozen)``, after one
  warm-up call that compiles it; the final state). For benchmarks."""
  state, m = step(state, frozen)
  jax.block_until_ready(m)
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    state, m = step(state, frozen)
    jax.block_until_ready((state, m))
    best = min(best, time.perf_counter() - t)
  return best, state


def make_update(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                grad_transform: Callable[[PyTree, PyTree], PyTree] | None = None,
                post_update: Callable[[PyTree], PyTree] | None = None):
  """One optimisation step ``(state, frozen) -> (state, metrics)`` (not jitted)."""

  def update(state: TrainState, frozen: PyTree):
    key = jax.random.fold_in(state.key, state.step)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, frozen, key)
    if grad_transform is not None:
      grads = grad_transform(grads, state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if post_update is not None:
      params = post_update(params)
    return TrainState(state.step + 1, params, opt_state, state.key), {"loss": loss, **metrics}

  return update


def make_multi_step(update, n_steps: int, state_sharding=None):
  """Jitted ``(state, frozen) -> (state, mean metrics)`` running `n_steps` updates in a scan.

  The metrics also hold 'first_bad_step': the first step of the dispatch whose loss was not
  finite (-1 if none), found on device. The state buffers are donated: the caller must not
  reuse the state it passed in. With `state_sharding` the new state is laid out as the old one
  (inputs keep their own placement).
  """

  def multi(state, frozen):
    def body(carry, _):
      s, bad = carry
      s2, m = update(s, frozen)
      bad = jnp.where((bad < 0) & ~jnp.isfinite(m["loss"]), s.step, bad)
      return (s2, bad), m
    (state, bad), metrics = jax.lax.scan(body, (state, jnp.int32(-1)), None, length=n_steps)
    return state, {**jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics),
                   "first_bad_step": bad}

  kw = {} if state_sharding is None else dict(out_shardings=(state_sharding, None))
  return jax.jit(multi, donate_argnums=0, **kw)


def _drop_logged_after(path: str, step: int) -> None:
  """A resumed run logs its steps again: forget what a killed run logged past its checkpoint."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
  with open(path, "w") as f:
    f.writelines(keep)


def _fmt(metrics: dict) -> str:
  fmt = lambda v: f"[{' '.join(f'{u:.3g}' for u in v)}]" if isinstance(v, list) else f"{v:.4g}"
  return " ".join(f"{k} {fmt(v)}" for k, v in metrics.items())


def _to_host(metrics: dict) -> dict:
  """Scalars as floats, vector metrics (e.g. one value per component) as lists of floats."""
  return {k: (float(v) if np.ndim(v) == 0 else np.asarray(v, np.float64).tolist())
          for k, v in jax.device_get(metrics).items()}


def _print(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


class _Progress:
  """The progress line: rate and ETA from the steps after the first dispatch (which compiles),
  the compile time once."""

  def __init__(self, name: str, total: int, start: int, out: Callable[[str], None] | None):
    self.name, self.total, self.out = name, total, out
    self.t0, self.s0 = time.perf_counter(), start
    self.steady = None   # (time, step) when the first dispatch had finished

  def first_done(self, step: int) -> None:
    now = time.perf_counter()
    self.steady = (now, step)
    if self.out:
      self.out(f"{self.name}: compiled and ran the first dispatch in {now - self.t0:.1f}s")

  def rate(self, step: int) -> float:
    t, s = self.steady if self.steady and step > self.steady[1] else (self.t0, self.s0)
    dt = time.perf_counter() - t
    return (step - s) / dt if dt > 0 else float("nan")

  def line(self, step: int, metrics: dict) -> str:
    rate = self.rate(step)
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    return (f"{self.name} step {step}/{self.total} | {rate:.0f} steps/s | ETA {eta:.0f}s | "
            f"{_fmt(metrics)}")


def fit(state: TrainState, frozen: PyTree, update, *, total_steps: int, workdir: str | None,
        log_every: int = 1000, steps_per_dispatch: int = 100, checkpoint_every: int = 0,
        checkpointer: Checkpointer | None = None, name: str = "train",
        quiet: bool = False) -> TrainState:
  """Run `update` from state.step to `total_steps`; return the final state.

  Every `log_every` steps the mean metrics of the last dispatch go to ``<workdir>/metrics.jsonl``
  (the directory is created) and a progress line to stderr (rate and ETA from the steps after
  the first, compiling, dispatch; none with `quiet`); every `checkpoint_every` steps (and at the
  end) the state is saved. Both must be multiples of `steps_per_dispatch`. Every dispatch's loss
  is checked on device: a non-finite loss raises NonFiniteLossError naming the first bad step,
  before anything is saved over the last good checkpoint. The caller's `state` stays valid (it
  is copied once; the loop then donates its own buffers). The state keeps the sharding it comes
  in with (place it on a mesh with `paramdecomp.core.sharding` first); `frozen` is used where it
  lies.
  """
  for nm, every in (("log_every", log_every), ("checkpoint_every", checkpoint_every)):
    if every and every % steps_per_dispatch:
      raise ValueError(f"{nm}={every} is not a multiple of steps_per_dispatch={steps_per_dispatch}")
  compiled: dict[int, Any] = {}
  state_sharding = jax.tree.map(lambda a: a.sharding, state)
  state = jax.tree.map(jnp.copy, state)   # the loop donates; the caller's state stays alive

  def runner(n):
    if n not in compiled:
      compiled[n] = make_multi_step(update, n, state_sharding)
    return compiled[n]

  main = workdir and jax.process_index() == 0
  log_path = os.path.join(workdir, "metrics.jsonl") if main else None
  step = int(state.step)
  if log_path:
    os.makedirs(workdir, exist_ok=True)
    _drop_logged_after(log_path, step)
  progress = _Progress(name, total_steps, step, None if quiet else _print)
  pending = None   # the previous dispatch's first bad step, checked once the next one is queued

  def check(bad, first, last):
    bad = int(bad)
    if bad >= 0:
      raise NonFiniteLossError(
          f"{name}: non-finite loss at step {bad} (dispatch of steps {first}..{last}); last "
          f"checkpoint kept: {checkpointer.latest_step() if checkpointer else None}")

  while step < total_steps:
    n = min(steps_per_dispatch, total_steps - step)
    state, metrics = runner(n)(state, frozen)
    if pending is not None:
      check(*pending)
    pending = (metrics["first_bad_step"], step, step + n)
    if progress.steady is None:
      jax.block_until_ready(metrics)
      progress.first_done(step + n)
    step += n
    is_last = step == total_steps
    do_log = log_every and (step % log_every == 0 or is_last)
    do_ckpt = checkpointer is not None and (is_last or (checkpoint_every and
                                                        step % checkpoint_every == 0))
    if not (do_log or do_ckpt or is_last):
      continue
    check(*pending)
    pending = None
    if do_log:
      metrics = _to_host({k: v for k, v in metrics.items() if k != "first_bad_step"})
      rate = progress.rate(step)
      if not quiet:
        _print(progress.line(step, metrics))
      if log_path:
        with open(log_path, "a") as f:
          f.write(json.dumps({"step": step, "steps_per_s": rate, **metrics}) + "\n")
    if do_ckpt:
      checkpointer.save(step, state)
  if pending is not None:
    check(*pending)
  if checkpointer is not None:
    checkpointer.wait()
  return state
