"""A LIB build of a saved classifier target: bases, edges, ablations, figures and summary."""
from __future__ import annotations

import os
import time

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from paramdecomp.core import scan
from paramdecomp.methods import ablations, degeneracy, lib
from paramdecomp.runs import figures, modadd_fourier
from paramdecomp.core import config as cfglib
from paramdecomp.core.checkpoint import MissingCheckpointError, save_json
from paramdecomp.runs.targets import evaluate_classifier, load_target

BASES = ("lib", "pca", "neuron")
# per model kind: what its basis features mean (summary["features"])
FEATURE_REPORTS = {"modadd": modadd_fourier.feature_report}


def default_config() -> ml_collections.ConfigDict:
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


def validate(c: ml_collections.ConfigDict) -> None:
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


def _basis_config(c, name: str) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(c.lib.to_dict())
  if name != "lib":
    cfg.formula = name
  return cfg


def _save_tree(path: str, tree) -> None:
  with ocp.StandardCheckpointer() as ck:
    ck.save(os.path.abspath(path), tree, force=True)


def _load_tree(path: str):
  with ocp.StandardCheckpointer() as ck:
    return ck.restore(os.path.abspath(path))


def _basis_tree(bases, names) -> dict:
  return {n: {"C": b.C, "C_pinv": b.C_pinv, "Lambda": b.Lambda,
              "gram_eigenvalues": b.gram_eigenvalues, "n_const": np.int32(b.n_const)}
          for n, b in zip(names, bases)}


def _bases_from_tree(tree, names) -> list:
  return [lib.NodeBasis(*(np.asarray(tree[n][k], np.float64) for k in
                          ("C", "C_pinv", "Lambda", "gram_eigenvalues")), int(tree[n]["n_const"]))
          for n in names]


def build(c: ml_collections.ConfigDict, workdir: str, resume: bool = False) -> dict:
  validate(c)
  target, tcfg, params = load_target(c.target_dir)
  if not (target.is_classifier and target.sequential_view is not None):
    raise cfglib.ConfigError("target_dir", f"the {tcfg.model.kind!r} target has no sequential "
                             "view / classification dataset to build a basis on")
  os.makedirs(workdir, exist_ok=True)
  for sub in ("bases", "edges"):
    if os.path.isdir(os.path.join(workdir, sub)) and not resume:
      raise FileExistsError(f"{workdir} already holds {sub}/; pass --resume to reuse them or "
                            "choose another workdir")
  save_json(os.path.join(workdir, "config.json"), c.to_dict())
  seq = target.sequential_view(tcfg.model)
  ds = target.dataset(tcfg)
  apply = target.make_apply(tcfg.model)
  x_build = ds[f"{c.build_split}_x"]
  x_eval, y_eval = ds[f"{c.eval_split}_x"], ds[f"{c.eval_split}_y"]
  names = list(seq.names)
  summary = {"target": {s: evaluate_classifier(apply, params, ds[f"{s}_x"], ds[f"{s}_y"])
                        for s in ("train", "test")}, "nodes": names, "timings_s": {}}
  logging.info("target: %s", summary["target"])

  # ---- bases
  dtype = c.lib.dtype
  p64, xb64 = scan.cast(params, dtype), scan.cast(x_build, dtype)
  view = lib.view_of(seq, p64, jax.tree.map(lambda a: a[0], xb64))
  all_bases = {}
  for name in c.bases:
    path = os.path.join(workdir, "bases", name)
    if resume and os.path.isdir(path):
      all_bases[name] = _bases_from_tree(_load_tree(path), names)
      continue
    cfg = _basis_config(c, name)
    if "moments" not in summary:
      t = time.perf_counter()
      moments = [jax.block_until_ready(lib.gram(seq, p64, view, l, xb64, cfg.chunk_size))
                 for l in range(view.last + 1)]
      summary["timings_s"]["gram"] = time.perf_counter() - t
      summary["moments"] = True
    t = time.perf_counter()
    all_bases[name] = lib.bases_from_moments(seq, p64, view, moments, xb64, cfg)
    summary["timings_s"][f"basis_{name}"] = time.perf_counter() - t
    _save_tree(path, _basis_tree(all_bases[name], names))
    logging.info("%s basis sizes %s (%.1fs)", name, [b.C.shape[1] for b in all_bases[name]],
                 summary["timings_s"][f"basis_{name}"])
  summary.pop("moments", None)
  summary["basis_sizes"] = {n: {nm: int(b.C.shape[1]) for nm, b in zip(names, bs)}
                            for n, bs in all_bases.items()}
  summary["node_dims"] = {nm: int(view.dim(l)) for l, nm in enumerate(names)}
  summary["degeneracy"] = _degeneracy(c, target, tcfg, seq, p64, xb64, names,
                                      all_bases[c.bases[0]])

  if tcfg.model.kind in FEATURE_REPORTS:
    report = FEATURE_REPORTS[tcfg.model.kind]
    summary["features"] = {name: report(seq, params, all_bases[name], tcfg)
                           for name in all_bases if name != "neuron"}

  # ---- edges
  all_edges = {}
  for name in [b for b in c.bases if b != "neuron"]:
    path = os.path.join(workdir, "edges", name)
    if resume and os.path.isdir(path):
      tree = _load_tree(path)
      all_edges[name] = [np.asarray(tree[f"{names[l]}->{names[l + 1]}"])
                         for l in range(len(names) - 1)]
      continue
    t = time.perf_counter()
    all_edges[name] = lib.build_edges(seq, p64, all_bases[name], xb64, _basis_config(c, name))
    summary["timings_s"][f"edges_{name}"] = time.perf_counter() - t
    _save_tree(path, {f"{names[l]}->{names[l + 1]}": e for l, e in enumerate(all_edges[name])})
    logging.info("%s edges (%.1fs)", name, summary["timings_s"][f"edges_{name}"])
  for name, es in all_edges.items():
    skip = [all_bases[name][l].n_const for l in range(len(names))]
    figures.interaction_graph(es, names, os.path.join(workdir, f"graph_{name}.png"),
                              title=f"{name} interaction graph ({tcfg.model.kind})",
                              skip_const=skip)

  # ---- ablations
  score = ablations.classifier_scores
  adt = c.ablation.dtype
  base_acc = summary["target"][c.eval_split]["accuracy"]
  if c.ablation.nodes:
    t = time.perf_counter()
    summary["node_ablation"], summary["directions_needed"] = {}, {}
    for l, nm in enumerate(names[:-1]):
      sched = ablations.exponential_schedule(view.dim(l), c.ablation.cutoff, c.ablation.base)
      curves = {name: ablations.node_ablation_curve(seq, params, x_eval, y_eval, bs[l], l, score,
                                                    sched, c.ablation.chunk_size, adt)
                for name, bs in all_bases.items()}
      summary["node_ablation"][nm] = curves
      summary["directions_needed"][nm] = {
          name: {str(th): ablations.directions_needed(cv, th) for th in c.ablation.thresholds}
          for name, cv in curves.items()}
      figures.ablation_curves(curves, os.path.join(workdir, f"node_ablation_{nm}.png"),
                              title=f"{tcfg.model.kind}: ablating directions of {nm}",
                              threshold=min(c.ablation.thresholds))
      logging.info("directions needed at %s: %s", nm, summary["directions_needed"][nm])
    summary["timings_s"]["node_ablation"] = time.perf_counter() - t
  if c.ablation.edges:
    t = time.perf_counter()
    summary["edges_needed"], summary["edge_bisection"] = {}, {}
    for name, es in all_edges.items():
      bs = all_bases[name]
      need, trace = {}, {}
      for l in range(len(names) - 1):
        key = f"{names[l]}->{names[l + 1]}"
        need[key], trace[key] = ablations.edges_needed(
            seq, params, x_eval, y_eval, bs[l], bs[l + 1], l, es[l], score, base_acc,
            c.ablation.edge_tolerance, chunk_size=c.ablation.edge_chunk_size, dtype=adt)
        logging.info("%s %s: %d edges needed", name, key, need[key])
      summary["edges_needed"][name], summary["edge_bisection"][name] = need, trace
    summary["timings_s"]["edge_ablation"] = time.perf_counter() - t
  # modularity (§4.4): log-normalised by the weakest edge each bisection keeps
  summary["modularity"] = {}
  for name, es in all_edges.items():
    bs = all_bases[name]
    skip = [b.n_const for b in bs]
    eps = None
    if c.ablation.edges:
      eps = [ablations.edge_threshold(es[l], summary["edges_needed"][name][
          f"{names[l]}->{names[l + 1]}"], bs[l].n_const) or None for l in range(len(es))]
      eps = None if any(v is None for v in eps) else eps
    summary["modularity"][name] = degeneracy.graph_modularity(
        es, skip, resolution=c.modularity.resolution, n_iterations=c.modularity.n_iterations,
        seed=c.modularity.seed, eps=eps)
  save_json(os.path.join(workdir, "summary.json"), _jsonable(summary))
  return _jsonable(summary)


def _degeneracy(c, target, tcfg, seq, params, x, names, bases) -> dict:
  """§4.2 measures on the build data: null directions of each node's (centred) Gram matrix and
  of K = E[Jᵀ J] (J = ∂ output / ∂ node; relative tolerance 1e-10), and ReLU firing groups."""
  out = {"gram_null": {nm: degeneracy.rank_deficiency(b.gram_eigenvalues,
                                                      c.lib.truncation_threshold)
                       for nm, b in zip(names, bases)}, "jacobian_null": {}}
  for l, nm in enumerate(names[:-1]):
    k = degeneracy.jacobian_gram(seq, params, x, l, chunk_size=c.lib.chunk_size)
    out["jacobian_null"][nm] = degeneracy.rank_deficiency(np.linalg.eigvalsh(k), 1e-10,
                                                          relative=True)
  if target.relu_preactivations is not None:
    pre = target.relu_preactivations(params, tcfg.model, x)
    out["relu_groups"] = {}
    for nm, p in pre.items():
      g = degeneracy.firing_groups(np.asarray(p).reshape(-1, p.shape[-1]))
      out["relu_groups"][nm] = {"n_groups": len(g["groups"]), "largest": max(
          (len(s) for s in g["groups"]), default=1), "dead": len(g["dead"]),
          "always_on": len(g["always_on"]), "extra_free": g["extra_free"]}
  return out


def _jsonable(o):
  if isinstance(o, dict):
    return {str(k): _jsonable(v) for k, v in o.items()}
  if isinstance(o, (list, tuple)):
    return [_jsonable(v) for v in o]
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  return o


def load_bases(workdir: str, name: str, names) -> list:
  path = os.path.join(workdir, "bases", name)
  if not os.path.isdir(path):
    raise MissingCheckpointError(f"no {name} basis in {workdir}")
  return _bases_from_tree(_load_tree(path), names)
