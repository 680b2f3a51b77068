"""A LIB build of a saved classifier target: moments, bases, edges, degeneracy, ablations,
modularity, figures and summary. `build` runs one named step per part; the moments, bases and
edges are resumable (each loaded from the workdir with --resume when saved there, else computed
and saved, by `_load_or_compute`)."""
from __future__ import annotations

import functools
import os
import time
from typing import Any, NamedTuple

from absl import logging
import jax
import ml_collections
import numpy as np

from paramdecomp.core import checkpoint, metrics, scan
from paramdecomp.core import config as cfglib
from paramdecomp.core.checkpoint import save_json
from paramdecomp.core.sequential import Sequential
from paramdecomp.methods import ablations, degeneracy, lib
from paramdecomp.runs import figures, modadd_fourier
from paramdecomp.runs.targets import evaluate_classifier, load_target

BASES = ("lib", "pca", "neuron")
# per model kind: what its basis features mean (summary["features"])
FEATURE_REPORTS = {"modadd": modadd_fourier.feature_report}
RESUMABLE = ("moments", "bases", "edges")
SCORE = metrics.classification   # the ablations' score: mean loss and accuracy


def default_config() -> ml_collections.ConfigDict:
  """A build's settings: the target, LIB's own (`lib.default_config`), bases, splits, ablations."""
  c = ml_collections.ConfigDict()
  c.target_dir = ""
  c.lib = lib.default_config()
  c.bases = ("lib", "pca", "neuron")     # bases built (edges for lib and pca)
  c.build_split = "train"                # data the bases and edges are computed on
  c.eval_split = "test"                  # data of the ablations
  c.ablation = ml_collections.ConfigDict(dict(
      nodes=True, edges=True, cutoff=10, base=1.05, thresholds=(0.95, 0.99),
      edge_tolerance=1e-3, chunk_size=512, edge_chunk_size=128, dtype="float32"))
  c.modularity = ml_collections.ConfigDict(dict(resolution=1.0, n_iterations=10, seed=0))
  return c


def reference_config() -> ml_collections.ConfigDict:
  """`default_config` with the reference code's build settings (§5.5), for its figures: the
  Jacobian formula, centred, float64, the gradient rule, squared edges, and its absolute
  truncation at 1e-15."""
  c = default_config()
  c.lib.update(dict(formula="jacobian", center=True, truncation="absolute",
                    truncation_threshold=1e-15, integration="gradient", dtype="float64",
                    edge_formula="squared"))
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Raise ConfigError naming the first unknown or invalid field of a build config."""
  cfglib.check_fields(c, default_config())
  with cfglib.section("lib"):
    lib.validate(c.lib)
  cfglib.require(bool(c.target_dir), "target_dir", "is empty; name a scripts/train_toy.py run")
  cfglib.require(len(c.bases) > 0 and all(b in BASES for b in c.bases), "bases",
                 f"{tuple(c.bases)} must be a non-empty subset of {BASES}")
  for f in ("build_split", "eval_split"):
    cfglib.one_of(c, f, ("train", "test"))
  cfglib.one_of(c, "ablation.dtype", ("float32", "float64"))
  cfglib.positive(c, "ablation.chunk_size", "ablation.edge_chunk_size", "ablation.base")


class _Build(NamedTuple):
  """What the steps of one build share (read-only but for `timings`)."""
  c: ml_collections.ConfigDict
  workdir: str
  resume: bool
  target: Any                    # core.target.Target
  tcfg: ml_collections.ConfigDict
  seq: Sequential
  params: Any                    # as trained (the ablations cast them to c.ablation.dtype)
  p_lib: Any                     # in c.lib.dtype
  x_lib: jax.Array               # the build split in c.lib.dtype
  x_eval: np.ndarray
  y_eval: np.ndarray
  names: list
  view: lib.View
  timings: dict                  # wall seconds of each step computed (not loaded)


def build(c: ml_collections.ConfigDict, workdir: str, resume: bool = False) -> dict:
  """Build bases, edges, ablations and figures of `c.target_dir` in `workdir` and return the
  summary (also written as summary.json; see scripts/build_basis.py for the files)."""
  b, summary = _open(c, workdir, resume)
  bases = _bases(b)
  summary["basis_sizes"] = {n: {nm: int(x.C.shape[1]) for nm, x in zip(b.names, bs)}
                            for n, bs in bases.items()}
  summary["node_dims"] = {nm: int(b.view.dim(l)) for l, nm in enumerate(b.names)}
  summary["degeneracy"] = _degeneracy(b, bases[c.bases[0]])
  if b.tcfg.model.kind in FEATURE_REPORTS:
    report = FEATURE_REPORTS[b.tcfg.model.kind]
    summary["features"] = {name: report(b.seq, b.params, bases[name], b.tcfg)
                           for name in bases if name != "neuron"}
  edges = _edges(b, bases)
  _graphs(b, bases, edges)
  if c.ablation.nodes:
    summary.update(_node_ablations(b, bases))
  if c.ablation.edges:
    summary.update(_edge_ablations(b, bases, edges, summary["target"][c.eval_split]["accuracy"]))
  summary["modularity"] = _modularity(b, bases, edges, summary.get("edges_needed"))
  summary["timings_s"] = b.timings
  summary = _jsonable(summary)
  save_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def _open(c, workdir: str, resume: bool) -> tuple[_Build, dict]:
  """Validate, load the target, prepare the workdir; the build's shared state and the summary
  with the target's own scores."""
  validate(c)
  target, tcfg, params = load_target(c.target_dir)
  if not (target.is_classifier and target.sequential_view is not None):
    raise cfglib.ConfigError("target_dir", f"the {tcfg.model.kind!r} target has no sequential "
                             "view / classification dataset to build a basis on")
  os.makedirs(workdir, exist_ok=True)
  for sub in RESUMABLE:
    if os.path.isdir(os.path.join(workdir, sub)) and not resume:
      raise FileExistsError(f"{workdir} already holds {sub}/; pass --resume to reuse them or "
                            "choose another workdir")
  save_json(os.path.join(workdir, "config.json"), c.to_dict())
  seq, ds, apply = target.sequential_view(tcfg.model), target.dataset(tcfg), target.make_apply(
      tcfg.model)
  p_lib, x_lib = scan.cast(params, c.lib.dtype), scan.cast(ds[f"{c.build_split}_x"], c.lib.dtype)
  b = _Build(c, workdir, resume, target, tcfg, seq, params, p_lib, x_lib,
             ds[f"{c.eval_split}_x"], ds[f"{c.eval_split}_y"], list(seq.names),
             lib.view_of(seq, p_lib, x_lib[0]), {})
  summary = {"target": {s: evaluate_classifier(apply, params, ds[f"{s}_x"], ds[f"{s}_y"])
                        for s in ("train", "test")}, "nodes": b.names}
  logging.info("target: %s", summary["target"])
  return b, summary


def _saved(b: _Build, sub: str) -> bool:
  return b.resume and os.path.isdir(os.path.join(b.workdir, sub))


def _load_or_compute(b: _Build, sub: str, compute, timing: str) -> dict:
  """The pytree saved at <workdir>/<sub> when resuming and it is there; else ``compute()``,
  saved there, with its wall time in b.timings[timing]."""
  path = os.path.join(b.workdir, sub)
  if _saved(b, sub):
    return checkpoint.load_tree(path, as_numpy=True)   # numpy: float64 kept as saved
  t = time.perf_counter()
  tree = compute()
  b.timings[timing] = time.perf_counter() - t
  checkpoint.save_tree(path, tree)
  return tree


def _compute_moments(b: _Build) -> dict:
  moments = lib.node_moments(b.seq, b.p_lib, b.x_lib, b.c.lib)
  return {nm: {"mean": mu, "second": second} for nm, (mu, second) in zip(b.names, moments)}


def _compute_basis(b: _Build, moments: list, name: str) -> dict:
  bases = lib.bases_from_moments(b.seq, b.p_lib, b.x_lib, moments, _basis_config(b.c, name))
  return {nm: {"C": x.C, "C_pinv": x.C_pinv, "Lambda": x.Lambda,
               "gram_eigenvalues": x.gram_eigenvalues, "n_const": np.int32(x.n_const)}
          for nm, x in zip(b.names, bases)}


def _bases(b: _Build) -> dict:
  """{basis name: [NodeBasis per node]}, from each node's moments (computed once, and only when
  some basis is not saved)."""
  moments = None
  if not all(_saved(b, f"bases/{name}") for name in b.c.bases):
    tree = _load_or_compute(b, "moments", functools.partial(_compute_moments, b), "gram")
    moments = [(tree[nm]["mean"], tree[nm]["second"]) for nm in b.names]
  out = {}
  for name in b.c.bases:
    tree = _load_or_compute(b, f"bases/{name}", functools.partial(_compute_basis, b, moments, name),
                            f"basis_{name}")
    out[name] = [lib.NodeBasis(*(np.asarray(tree[nm][k], np.float64) for k in
                                 ("C", "C_pinv", "Lambda", "gram_eigenvalues")),
                               int(tree[nm]["n_const"])) for nm in b.names]
    logging.info("%s basis sizes %s", name, [x.C.shape[1] for x in out[name]])
  return out


def _edge_keys(names) -> list[str]:
  return [f"{names[l]}->{names[l + 1]}" for l in range(len(names) - 1)]


def _compute_edges(b: _Build, bases: list, name: str) -> dict:
  es = lib.build_edges(b.seq, b.p_lib, b.x_lib, bases, _basis_config(b.c, name))
  return dict(zip(_edge_keys(b.names), es))


def _edges(b: _Build, bases: dict) -> dict:
  """{basis name: [E^l]} for every basis but the neuron one."""
  out = {}
  for name in [n for n in b.c.bases if n != "neuron"]:
    tree = _load_or_compute(b, f"edges/{name}",
                            functools.partial(_compute_edges, b, bases[name], name),
                            f"edges_{name}")
    out[name] = [np.asarray(tree[k], np.float64) for k in _edge_keys(b.names)]
  return out


def _graphs(b: _Build, bases: dict, edges: dict) -> None:
  for name, es in edges.items():
    figures.interaction_graph(es, b.names, os.path.join(b.workdir, f"graph_{name}.png"),
                              title=f"{name} interaction graph ({b.tcfg.model.kind})",
                              skip_const=[x.n_const for x in bases[name]])


def _node_ablations(b: _Build, bases: dict) -> dict:
  """§5.4 node ablation curves of every basis at every node but the last, and the directions
  each needs to keep each threshold's accuracy."""
  a, t = b.c.ablation, time.perf_counter()
  curves_at, needed = {}, {}
  for l, nm in enumerate(b.names[:-1]):
    sched = ablations.exponential_schedule(b.view.dim(l), a.cutoff, a.base)
    curves = {name: ablations.node_ablation_curve(b.seq, b.params, b.x_eval, b.y_eval, l, bs[l],
                                                  SCORE, sched, a.chunk_size, a.dtype)
              for name, bs in bases.items()}
    curves_at[nm] = curves
    needed[nm] = {name: {str(th): ablations.directions_needed(cv, th) for th in a.thresholds}
                  for name, cv in curves.items()}
    figures.ablation_curves(curves, os.path.join(b.workdir, f"node_ablation_{nm}.png"),
                            title=f"{b.tcfg.model.kind}: ablating directions of {nm}",
                            threshold=min(a.thresholds))
    logging.info("directions needed at %s: %s", nm, needed[nm])
  b.timings["node_ablation"] = time.perf_counter() - t
  return {"node_ablation": curves_at, "directions_needed": needed}


def _edge_ablations(b: _Build, bases: dict, edges: dict, base_acc: float) -> dict:
  """The fewest edges of each edge set keeping the unablated accuracy (within the tolerance),
  by bisection (§5.4)."""
  a, t = b.c.ablation, time.perf_counter()
  needed, bisection = {}, {}
  for name, es in edges.items():
    bs = bases[name]
    needed[name], bisection[name] = {}, {}
    for l, key in enumerate(_edge_keys(b.names)):
      needed[name][key], bisection[name][key] = ablations.edges_needed(
          b.seq, b.params, b.x_eval, b.y_eval, l, bs[l], bs[l + 1], es[l], SCORE, base_acc,
          a.edge_tolerance, chunk_size=a.edge_chunk_size, dtype=a.dtype)
      logging.info("%s %s: %d edges needed", name, key, needed[name][key])
  b.timings["edge_ablation"] = time.perf_counter() - t
  return {"edges_needed": needed, "edge_bisection": bisection}


def _modularity(b: _Build, bases: dict, edges: dict, edges_needed: dict | None) -> dict:
  """§4.4 modularity of each interaction graph, log-normalised by the weakest edge that each
  bisection keeps (by the smallest edge without the edge ablations)."""
  m, out = b.c.modularity, {}
  for name, es in edges.items():
    bs = bases[name]
    eps = None
    if edges_needed is not None:
      eps = [ablations.edge_threshold(e, edges_needed[name][key], bs[l].n_const) or None
             for l, (key, e) in enumerate(zip(_edge_keys(b.names), es))]
      eps = None if any(v is None for v in eps) else eps
    out[name] = degeneracy.graph_modularity(es, [x.n_const for x in bs], resolution=m.resolution,
                                            n_iterations=m.n_iterations, seed=m.seed, eps=eps)
  return out


def _degeneracy(b: _Build, bases: list) -> dict:
  """§4.2 measures on the build data: null directions of each node's (centred) Gram matrix and
  of K = E[Jᵀ J] (J = ∂ output / ∂ node; relative tolerance 1e-10), and ReLU firing groups."""
  out = {"gram_null": {nm: degeneracy.rank_deficiency(
      x.gram_eigenvalues, lib.cutoff(x.gram_eigenvalues, b.c.lib))
                       for nm, x in zip(b.names, bases)}, "jacobian_null": {}}
  for l, nm in enumerate(b.names[:-1]):
    k = degeneracy.jacobian_gram(b.seq, b.p_lib, b.x_lib, l, chunk_size=b.c.lib.chunk_size)
    out["jacobian_null"][nm] = degeneracy.rank_deficiency(np.linalg.eigvalsh(k), 1e-10,
                                                          relative=True)
  if b.target.relu_preactivations is not None:
    pre = b.target.relu_preactivations(b.p_lib, b.tcfg.model, b.x_lib)
    out["relu_groups"] = {}
    for nm, p in pre.items():
      g = degeneracy.firing_groups(np.asarray(p).reshape(-1, p.shape[-1]))
      out["relu_groups"][nm] = {"n_groups": len(g["groups"]), "largest": max(
          (len(s) for s in g["groups"]), default=1), "dead": len(g["dead"]),
          "always_on": len(g["always_on"]), "extra_free": g["extra_free"]}
  return out


def _basis_config(c, name: str) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(c.lib.to_dict())
  if name != "lib":
    cfg.formula = name
  return cfg


def _jsonable(o):
  if isinstance(o, dict):
    return {str(k): _jsonable(v) for k, v in o.items()}
  if isinstance(o, (list, tuple)):
    return [_jsonable(v) for v in o]
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  return o
