"""Milliseconds per SPD step on toy targets (the numbers in BENCHMARKS.md).

  taskset -c 1 python scripts/bench_spd.py --variants=tms:5-2,resid_mlp:1-layer

Times the compiled, scanned training step (`steps` per dispatch) after a warm-up dispatch, best
of `repeats`, with the paper's config of each variant (TMS 5-2: C 20, batch 4096; ResidMLP
1-layer: C 100, batch 2048); the target is freshly initialised (values do not change the cost).
`--parts` also times the step with pieces switched off, to say where the time goes.
"""
from absl import app, flags
import jax

from paramdecomp.configs import resid_mlp as resid_mlp_configs
from paramdecomp.configs import spd_resid_mlp, spd_tms
from paramdecomp.configs import tms as tms_configs
from paramdecomp.core import train
from paramdecomp.core.cli import machine_line
from paramdecomp.methods import spd
from paramdecomp.runs import decompose_spd
from paramdecomp.toy_models import registry

_VARIANTS = flags.DEFINE_list("variants", ["tms:5-2", "resid_mlp:1-layer"],
                              "tms:<spd_tms.py variant> or resid_mlp:<spd_resid_mlp.py variant>.")
_STEPS = flags.DEFINE_integer("steps", 50, "Steps per dispatch.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed dispatches (best is reported).")
_PARTS = flags.DEFINE_bool("parts", False, "Also time the step without some of its pieces.")

PARTS = {  # name: config changes
    "full step": {},
    "no layerwise recon": dict(stochastic_recon_layerwise_coeff=0.0),
    "no recon at all": dict(stochastic_recon_layerwise_coeff=0.0, stochastic_recon_coeff=0.0),
    "affine CI (d_gate 0)": dict(d_gate=0),
    "tanh GELU": dict(gelu="tanh"),
}


def configs(variant: str):
  kind, v = variant.split(":", 1)
  if kind == "tms":
    return tms_configs.get_config(v), spd_tms.get_config(v)
  return resid_mlp_configs.get_config(v), spd_resid_mlp.get_config(v)


def bench_spd(variant: str, steps: int, repeats: int, changes=None) -> float:
  tcfg, c = configs(variant)
  c.spd.update(changes or {})
  target = registry.of(tcfg.model)
  apply, params = target.decomposable(tcfg.model, target.init(jax.random.PRNGKey(0), tcfg.model))
  batch_fn = lambda k: target.batch(k, tcfg, c.batch_size)
  x = jax.eval_shape(batch_fn, jax.random.PRNGKey(0))
  cfg = decompose_spd.method_config(c)
  opt = decompose_spd.optimizer(c)
  state = train.init_state(spd.init(jax.random.PRNGKey(1), params, cfg, apply=apply, x=x), opt,
                           jax.random.PRNGKey(2))
  step = train.make_multi_step(spd.make_update(apply, cfg, batch_fn, opt), steps)
  best, _ = train.best_dispatch_seconds(step, state, params, repeats)
  return 1e3 * best / steps


def main(argv):
  del argv
  print(machine_line())
  print("| target | C | batch | variant | ms/step |\n|---|---|---|---|---|")
  for v in _VARIANTS.value:
    c = configs(v)[1]
    for name, changes in (PARTS.items() if _PARTS.value else [("full step", {})]):
      ms = bench_spd(v, _STEPS.value, _REPEATS.value, changes)
      print(f"| SPD {v} | {c.spd.C} | {c.batch_size} | {name} | {ms:.2f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
