"""Milliseconds per APD step on toy targets (the numbers in BENCHMARKS.md).

  python scripts/bench.py [--variants=5-2-paper,40-10] [--batch=2048] [--steps=200] [--repeats=5]
  python scripts/bench.py --variants=resid_mlp:1-layer,resid_mlp:1-layer-rank1 --batch=256 \
      --steps=10 --repeats=3

Times the compiled, scanned training step (`steps` steps per dispatch) after a warm-up dispatch,
best of `repeats`; the target is freshly initialised (values do not change the cost).
"""

from absl import app, flags
import jax
import optax

from paramdecomp.configs import apd_resid_mlp
from paramdecomp.configs import apd_tms
from paramdecomp.configs import resid_mlp as resid_mlp_configs
from paramdecomp.configs import tms as tms_configs

from paramdecomp.core.cli import machine_line
from paramdecomp.methods import apd
from paramdecomp.core import train
from paramdecomp.toy_models import registry

_VARIANTS = flags.DEFINE_list("variants", ["5-2-paper", "40-10"],
                              "TMS variants (`apd_tms.py`; 5-2-paper: the C = 5 the references "
                              "run), or resid_mlp:<apd_resid_mlp.py variant>.")
_BATCH = flags.DEFINE_integer("batch", 2048, "Decomposition batch size.")
_STEPS = flags.DEFINE_integer("steps", 200, "Steps per dispatch.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed dispatches (best is reported).")


def configs(variant: str):
  """(target config, decomposition config) of a bench variant."""
  if variant.startswith("resid_mlp:"):
    v = variant.split(":", 1)[1]
    return resid_mlp_configs.get_config(v.split("-rank")[0]), apd_resid_mlp.get_config(v)
  return tms_configs.get_config(variant.removesuffix("-paper")), apd_tms.get_config(variant)


def bench_apd(variant: str, batch: int, steps: int, repeats: int) -> float:
  tcfg, c = configs(variant)
  target = registry.of(tcfg.model)
  apply, params = target.decomposable(tcfg.model, target.init(jax.random.PRNGKey(0), tcfg.model))
  batch_fn = lambda k: target.batch(k, tcfg, batch)
  opt = optax.adam(c.optim.lr)
  state = train.init_state(apd.init(jax.random.PRNGKey(1), params, c.apd), opt,
                           jax.random.PRNGKey(2))
  step = train.make_multi_step(apd.make_update(apply, c.apd, batch_fn, opt), steps)
  best, _ = train.best_dispatch_seconds(step, state, params, repeats)
  return 1e3 * best / steps


def main(argv):
  del argv
  print(machine_line())
  print("| target | C | m | batch | ms/step |\n|---|---|---|---|---|")
  for v in _VARIANTS.value:
    ms = bench_apd(v, _BATCH.value, _STEPS.value, _REPEATS.value)
    a = configs(v)[1].apd
    print(f"| APD {v} | {a.C} | {a.m or 'full'} | {_BATCH.value} | {ms:.2f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
