"""L3D benchmarks (BENCHMARKS.md): time and memory of the two computation paths, and the cases
behind `l3d.choose_path`'s rule.

  taskset -c 1 python scripts/bench_l3d.py --sections=rule [--repeats=5] [--models=...] [--batches=...]

epoch: seconds per epoch (1000 samples, batch 32 = 31 Adam steps, scanned as one dispatch) of the
  TM1 and TM4 decompositions with the paper's settings, per path; best of `repeats` after a
  warm-up dispatch; freshly initialised targets (values do not change the cost).
memory: peak temporary memory of one compiled L3D step on the x -> x^2 MLP (TM4 architecture,
  hidden width from --widths) as the batch grows (--mem_batches), from XLA's `memory_analysis()`,
  next to the size of a batch x parameters float32 array; plus ms per step.
rule: ms per step of each path (steps scanned in one dispatch, the two paths' dispatches
  alternated so that drift of a shared machine hits both alike, best of `repeats`) and the
  compiled step's temp memory, on the models of `bench_models` for every batch and n_subnets;
  the last columns are what `choose_path` picks and whether that is the faster path.
"""

import time
from typing import Callable, NamedTuple

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from paramdecomp.configs import l3d_decompose
from paramdecomp.configs import l3d_toys

from paramdecomp.core.cli import machine_line
from paramdecomp.methods import l3d
from paramdecomp.core import train
from paramdecomp.toy_models import squares
from paramdecomp.runs import targets as training
from paramdecomp.runs.decompose_l3d import sampler
from paramdecomp.toy_models import registry

_SECTIONS = flags.DEFINE_list("sections", ["epoch", "memory", "rule"], "What to measure.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed dispatches per path (best is reported).")
_MEM_BATCHES = flags.DEFINE_list("mem_batches", ["32", "256", "1024", "4096"],
                                 "Batch sizes (memory).")
_WIDTHS = flags.DEFINE_list("widths", ["5", "100"], "Hidden widths of the x^2 MLP (memory).")
_MODELS = flags.DEFINE_list("models", ["tm1", "tm4", "tm4w100", "mlp", "cnn", "attn"],
                            "Models of the rule section (bench_models.MODELS).")
_BATCHES = flags.DEFINE_list("batches", ["32", "256", "1024"], "Batch sizes (rule).")
_NV = flags.DEFINE_list("n_subnets", ["5", "20"], "Numbers of subnetworks (rule).")
_DISPATCH_S = flags.DEFINE_float("dispatch_s", 0.05,
                                 "Steps per timed dispatch: about this many seconds' worth.")


class Model(NamedTuple):
  apply: Callable
  params: dict
  x_shape: tuple  # one sample's input shape
  rank: int = 1
  sequence: bool = False


def _linen(module, x_shape, **kw) -> Model:
  params = module.init(jax.random.PRNGKey(0), jnp.zeros((1,) + x_shape))["params"]
  return Model(lambda p, x: module.apply({"params": p}, x), params, x_shape, **kw)


def _toy(variant: str, width: int | None = None) -> Model:
  tcfg = l3d_toys.get_config(variant)
  if width is not None:
    tcfg.model = squares.model_config(width=width)
  target = registry.of(tcfg.model)
  c = l3d_decompose.get_config(variant)
  apply, params = target.decomposable(tcfg.model, target.init(jax.random.PRNGKey(0), tcfg.model),
                                      c.target_view)
  return Model(apply, params, (tcfg.model.n_features,), c.l3d.rank)


class _CNN(nn.Module):
  @nn.compact
  def __call__(self, x):  # [B, 8, 8, 1] -> [B, 10]
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


class _Attention(nn.Module):
  @nn.compact
  def __call__(self, x):  # [B, T, 32] -> [B, T, 32]: one residual self-attention block
    return x + nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32)(x, x)


# the rule section's models; inputs are N(0, 1) draws (values do not change the cost)
MODELS = {
    "tm1": lambda: _toy("tm1"),                          # TMS 5-2 untied, n_w 25
    "tm4": lambda: _toy("tm4"),                          # x^2 MLP width 5, n_w 150
    "tm4w100": lambda: _toy("tm4", width=100),           # x^2 MLP width 100, n_w 31,405
    "mlp": lambda: _linen(nn.Sequential([nn.Dense(100), nn.relu, nn.Dense(100), nn.relu,
                                         nn.Dense(10)]), (64,)),  # digits-sized, n_w 17,610
    "cnn": lambda: _linen(_CNN(), (8, 8, 1)),           # n_w 5,794
    "attn": lambda: _linen(_Attention(), (8, 32), sequence=True),  # n_w 4,224, T 8
    "attn2": lambda: _linen(_Attention(), (2, 32), sequence=True),  # T 2: reuse ~2
}


def _setup(variant: str, path: str, batch: int, model_cfg=None):
  tcfg = l3d_toys.get_config(variant)
  if model_cfg is not None:
    tcfg.model = model_cfg
  target = registry.of(tcfg.model)
  raw = target.init(jax.random.PRNGKey(0), tcfg.model)
  c = l3d_decompose.get_config(variant)
  apply, params = target.decomposable(tcfg.model, raw, c.target_view)
  c.l3d.path = path
  data = training.batch(jax.random.PRNGKey(1), tcfg, max(1000, batch))
  opt = optax.adam(c.lr)
  state = train.init_state(l3d.init(jax.random.PRNGKey(2), params, c.l3d), opt,
                           jax.random.PRNGKey(3))
  update = l3d.make_update(apply, c.l3d, sampler(batch), opt)
  return update, state, train.Frozen(params, data)


def seconds_per_epoch(variant: str, path: str, repeats: int) -> float:
  update, state, frozen = _setup(variant, path, 32)
  step = train.make_multi_step(update, 1000 // 32)
  return train.best_dispatch_seconds(step, state, frozen, repeats)[0]


def _temp_bytes(compiled) -> float:
  mem = compiled.memory_analysis()
  return mem.temp_size_in_bytes if mem is not None else float("nan")


def step_memory_and_time(path: str, batch: int, width: int, repeats: int):
  """(temp bytes of the compiled step, n_w, ms per step)."""
  mcfg = squares.model_config(width=width)
  update, state, frozen = _setup("tm4", path, batch, mcfg)
  n_w = sum(w.size for w in jax.tree.leaves(frozen.params))
  step = jax.jit(update, donate_argnums=0)
  temp = _temp_bytes(step.lower(state, frozen).compile())
  best, _ = train.best_dispatch_seconds(step, state, frozen, repeats)
  return temp, n_w, 1e3 * best


def rule_case(model: str, batch: int, n_v: int, repeats: int):
  """{path: (ms per step, temp bytes)} for one (model, batch, n_subnets), plus the case's
  figures (n_w, the per-sample forward flops, auto's pick)."""
  m = MODELS[model]()
  cfg = l3d.default_config()
  cfg.update(dict(n_subnets=n_v, rank=m.rank, sequence=m.sequence))
  opt = optax.adam(1e-3)
  x_fn = lambda k: jax.random.normal(k, (batch,) + m.x_shape)
  cases = {}
  for path in ("explicit", "forward"):
    c = cfg.copy_and_resolve_references()
    c.path = path
    update = l3d.make_update(m.apply, c, x_fn, opt)
    state = train.init_state(l3d.init(jax.random.PRNGKey(2), m.params, c), opt,
                             jax.random.PRNGKey(3))
    one = jax.jit(update, donate_argnums=0).lower(state, m.params).compile()
    temp = _temp_bytes(one)
    state, metrics = one(state, m.params)                # one step: how many fill a dispatch
    jax.block_until_ready(metrics)
    t, state = _time(one, state, m.params)
    n = max(1, min(200, round(_DISPATCH_S.value / max(t, 1e-6))))
    multi = train.make_multi_step(update, n)
    state, metrics = multi(state, m.params)              # compile
    jax.block_until_ready(metrics)
    cases[path] = [multi, state, n, float("inf"), temp]
  for _ in range(repeats):                               # the paths' dispatches alternate
    for case in cases.values():
      multi, state, n = case[:3]
      t, case[1] = _time(multi, state, m.params)
      case[3] = min(case[3], t / n)
  x1 = jnp.zeros((1,) + m.x_shape)
  flops = jax.jit(m.apply).lower(m.params, x1).compile().cost_analysis()
  flops = (flops[0] if isinstance(flops, list) else flops).get("flops", float("nan"))
  n_w = sum(w.size for w in jax.tree.leaves(m.params))
  cfg.path = "auto"
  reuse = l3d.forward_macs(m.apply, m.params, x1) / n_w
  auto = l3d.choose_path(cfg, batch, n_w, n_v, reuse)
  figures = dict(n_w=n_w, flops=flops, reuse=reuse, auto=auto)
  return {p: (1e3 * c[3], c[4]) for p, c in cases.items()}, figures


def _time(step, state, frozen):
  """(wall seconds of one dispatch of a donating step, the new state)."""
  t = time.perf_counter()
  state, metrics = step(state, frozen)
  jax.block_until_ready((state, metrics))
  return time.perf_counter() - t, state


def main(argv):
  del argv
  print(machine_line())
  mib = lambda b: f"{b / 2**20:.2f} MiB"
  if "epoch" in _SECTIONS.value:
    print("\n| model | path | time per epoch (31 steps of batch 32) |\n|---|---|---|")
    for v, name in (("tm1", "TM1 TMS 5-2 (n_v 5, rank 1)"),
                    ("tm4", "TM4 x^2 MLP (n_v 5, rank 2)")):
      for path in ("explicit", "forward"):
        s = seconds_per_epoch(v, path, _REPEATS.value)
        print(f"| {name} | {path} | {s * 1e3:.1f} ms |", flush=True)
  if "memory" in _SECTIONS.value:
    print("\n| width | n_w | batch | B x n_w f32 | explicit temp | forward temp | explicit ms/step "
          "| forward ms/step |\n|---|---|---|---|---|---|---|---|")
    for w in map(int, _WIDTHS.value):
      for b in map(int, _MEM_BATCHES.value):
        te, n_w, se = step_memory_and_time("explicit", b, w, _REPEATS.value)
        tf, _, sf = step_memory_and_time("forward", b, w, _REPEATS.value)
        print(f"| {w} | {n_w} | {b} | {mib(4 * b * n_w)} | {mib(te)} | {mib(tf)} | {se:.2f} "
              f"| {sf:.2f} |", flush=True)
  if "rule" in _SECTIONS.value:
    print("\n| model | n_w | fwd flops/sample | reuse | batch | n_v | explicit ms/step "
          "| forward ms/step | explicit temp | forward temp | auto | auto faster |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model in _MODELS.value:
      for b in map(int, _BATCHES.value):
        for n_v in map(int, _NV.value):
          r, f = rule_case(model, b, n_v, _REPEATS.value)
          (se, te), (sf, tf) = r["explicit"], r["forward"]
          best = "explicit" if se <= sf else "forward"
          print(f"| {model} | {f['n_w']} | {f['flops']:.0f} | {f['reuse']:.2f} | {b} | {n_v} "
                f"| {se:.3f} | {sf:.3f} "
                f"| {mib(te)} | {mib(tf)} | {f['auto']} | {'yes' if f['auto'] == best else 'NO'} |",
                flush=True)


if __name__ == "__main__":
  app.run(main)
