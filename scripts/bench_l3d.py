"""L3D benchmarks (BENCHMARKS.md): time per epoch and memory of the two computation paths.

  python scripts/bench_l3d.py [--repeats=5] [--batches=32,256,1024,4096] [--widths=5,100]

1. Seconds per epoch (1000 samples, batch 32 = 31 Adam steps, scanned as one dispatch) of the
   TM1 and TM4 decompositions with the paper's settings, for the explicit and forward paths; best
   of `repeats` after a warm-up dispatch; freshly initialised targets (values do not change the
   cost).
2. Peak temporary memory of one compiled L3D step (loss, gradient, Adam, decoder normalisation)
   on the x -> x^2 MLP (TM4 architecture, hidden width from --widths) as the batch grows, from
   XLA's `memory_analysis()` of the compiled program, next to the size of a batch x parameters
   float32 array; plus ms per step at each batch.
"""

from absl import app, flags
import jax
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

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed dispatches (best is reported).")
_BATCHES = flags.DEFINE_list("batches", ["32", "256", "1024", "4096"], "Batch sizes (memory).")
_WIDTHS = flags.DEFINE_list("widths", ["5", "100"], "Hidden widths of the x^2 MLP (memory).")


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


def step_memory_and_time(path: str, batch: int, width: int, repeats: int):
  """(temp bytes of the compiled step, n_w, ms per step)."""
  mcfg = squares.model_config(width=width)
  update, state, frozen = _setup("tm4", path, batch, mcfg)
  n_w = sum(w.size for w in jax.tree.leaves(frozen["target"]))
  step = jax.jit(update, donate_argnums=0)
  mem = step.lower(state, frozen).compile().memory_analysis()
  temp = mem.temp_size_in_bytes if mem is not None else float("nan")
  best, _ = train.best_dispatch_seconds(step, state, frozen, repeats)
  return temp, n_w, 1e3 * best


def main(argv):
  del argv
  print(machine_line())
  print("\n| model | path | time per epoch (31 steps of batch 32) |\n|---|---|---|")
  for v, name in (("tm1", "TM1 TMS 5-2 (n_v 5, rank 1)"), ("tm4", "TM4 x^2 MLP (n_v 5, rank 2)")):
    for path in ("explicit", "forward"):
      s = seconds_per_epoch(v, path, _REPEATS.value)
      print(f"| {name} | {path} | {s * 1e3:.1f} ms |", flush=True)
  print("\n| width | n_w | batch | B x n_w f32 | explicit temp | forward temp | explicit ms/step "
        "| forward ms/step |\n|---|---|---|---|---|---|---|---|")
  mib = lambda b: f"{b / 2**20:.2f} MiB"
  for w in map(int, _WIDTHS.value):
    for b in map(int, _BATCHES.value):
      te, n_w, se = step_memory_and_time("explicit", b, w, _REPEATS.value)
      tf, _, sf = step_memory_and_time("forward", b, w, _REPEATS.value)
      print(f"| {w} | {n_w} | {b} | {mib(4 * b * n_w)} | {mib(te)} | {mib(tf)} | {se:.2f} "
            f"| {sf:.2f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
