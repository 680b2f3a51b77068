"""APD and SPD side by side on the same TMS targets (several seeds): one table and one figure.

  python scripts/compare_apd_spd.py --variant=5-2 --seeds=1,2,3 --workdir=runs/spd_tms \
      [--spd_steps=40000] [--apd_steps=20000]

For seed s the target is <workdir>/target_<variant>_s<s> (trained here with the SPD paper's
recipe, 10k steps, when missing), APD runs in <workdir>/apd_<variant>_s<s> with
paramdecomp/configs/apd_tms.py, SPD in <workdir>/spd_<variant>_s<s>[_<steps>] with
paramdecomp/configs/spd_tms.py; a run whose summary.json exists is read, not rerun. The table
(markdown, printed and written to <workdir>/compare_<variant>.md) gives MMCS, ML2R, the
components / subcomponents in use and unused, the reconstruction (APD: minimality MSE with its
top-k masks; SPD: stochastic reconstruction) and the wall time of the decomposition; the figure
(<workdir>/compare_<variant>.png) plots MMCS and ML2R per seed for both.
"""
import json
import os
import time

from absl import app, flags
import numpy as np

from paramdecomp.configs import apd_tms, spd_tms
from paramdecomp.configs import tms as tms_configs
from paramdecomp.core.cli import setup_logging
from paramdecomp.runs import decompose_apd, decompose_spd
from paramdecomp.runs.targets import train_target

_VARIANT = flags.DEFINE_enum("variant", "5-2", ["5-2", "40-10", "5-2-id", "40-10-id"],
                             "TMS variant (APD has no +ID config: those rows are SPD only).")
_SEEDS = flags.DEFINE_list("seeds", ["1", "2", "3"], "Seeds.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Root run directory.", required=True)
_SPD_STEPS = flags.DEFINE_integer("spd_steps", 40_000, "SPD steps (paper: 40k).")
_APD_STEPS = flags.DEFINE_integer("apd_steps", 20_000, "APD steps (paper: 20k).")
_READ_SPD = flags.DEFINE_bool("read_spd_only", False, "Do not run SPD: read the SPD runs that "
                              "have finished, leave out the others.")


def _timed(fn, workdir, *args):
  """(summary, seconds) of a run, read back when it has finished before (seconds from its log:
  the steps over the logged rate)."""
  path = os.path.join(workdir, "summary.json")
  if os.path.exists(path):
    with open(path) as f:
      summary = json.load(f)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    secs = sum(1000 / r["steps_per_s"] for r in rows if r.get("steps_per_s"))
    return summary, secs
  t = time.perf_counter()
  summary = fn(*args, workdir)
  return summary, time.perf_counter() - t


def target(root, variant, seed):
  tdir = os.path.join(root, f"target_{variant}_s{seed}")
  if not os.path.exists(os.path.join(tdir, "target.json")):
    c = tms_configs.get_config(variant)
    c.seed, c.optim.steps = seed, 10_000          # the SPD paper's target recipe
    c.data.batch_size = 1024 if variant.startswith("5-2") else 8192
    c.run.log_every = 0
    train_target(c, tdir)
  return tdir


def compare(variant, seeds, root, spd_steps, apd_steps, read_spd_only=False) -> list[dict]:
  rows = []
  for seed in seeds:
    tdir = target(root, variant, seed)
    if "-id" not in variant:
      a = apd_tms.get_config(variant)
      a.seed, a.target_dir, a.optim.steps = seed, tdir, apd_steps
      s, secs = _timed(decompose_apd.decompose, os.path.join(root, f"apd_{variant}_s{seed}"), a)
      rows.append(dict(method="APD", seed=seed, mmcs=s["mmcs"], ml2r=s["ml2r"],
                       used=len(s["component_use"]) - s["unused_components"],
                       unused=s["unused_components"], recon=s["minimality"], seconds=secs))
    c = spd_tms.get_config(variant)
    c.seed, c.target_dir, c.optim.steps = seed, tdir, spd_steps
    suffix = "" if spd_steps == 40_000 else f"_{spd_steps}"
    sdir = os.path.join(root, f"spd_{variant}_s{seed}{suffix}")
    if read_spd_only and not os.path.exists(os.path.join(sdir, "summary.json")):
      continue
    s, secs = _timed(decompose_spd.decompose, sdir, c)
    n = s["non_negligible_total"]
    rows.append(dict(method="SPD", seed=seed, mmcs=s["mmcs"], ml2r=s["ml2r"], used=n,
                     unused=c.spd.C * len(s["non_negligible"]) - n,
                     recon=s["stochastic_recon"], seconds=secs))
  return rows


def table(rows, variant) -> str:
  out = ["| method | seed | MMCS | ML2R | in use | negligible / unused | reconstruction | time (s) |",
         "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    out.append(f"| {r['method']} | {r['seed']} | {r['mmcs']:.4f} | {r['ml2r']:.3f} | {r['used']} | "
               f"{r['unused']} | {r['recon']:.2e} | {r['seconds']:.0f} |")
  for m in ("APD", "SPD"):
    sel = [r for r in rows if r["method"] == m]
    if sel:
      mm, ml = np.array([r["mmcs"] for r in sel]), np.array([r["ml2r"] for r in sel])
      out.append(f"| {m} mean ± std | | {mm.mean():.4f} ± {mm.std():.4f} | "
                 f"{ml.mean():.3f} ± {ml.std():.3f} | | | | |")
  return f"TMS {variant}\n\n" + "\n".join(out)


def figure(rows, path, variant):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(7, 3))
  for ax, key in zip(axes, ("mmcs", "ml2r")):
    for m, mark in (("APD", "o"), ("SPD", "s")):
      sel = [r for r in rows if r["method"] == m]
      ax.plot([r["seed"] for r in sel], [r[key] for r in sel], mark, label=m)
    ax.axhline(1.0, color="k", lw=0.6, ls="--")
    ax.set_xlabel("seed"), ax.set_title(key.upper()), ax.legend()
  fig.suptitle(f"APD and SPD on TMS {variant}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  setup_logging()
  root, v = _WORKDIR.value, _VARIANT.value
  rows = compare(v, [int(s) for s in _SEEDS.value], root, _SPD_STEPS.value, _APD_STEPS.value,
                 _READ_SPD.value)
  text = table(rows, v)
  print(text)
  with open(os.path.join(root, f"compare_{v}.md"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(root, f"compare_{v}.json"), "w") as f:
    json.dump(rows, f, indent=2)
  figure(rows, os.path.join(root, f"compare_{v}.png"), v)


if __name__ == "__main__":
  app.run(main)
