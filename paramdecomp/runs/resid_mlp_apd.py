"""The APD paper's analyses of a decomposed residual MLP (docs/methods/apd.md §1.9).

Which component carries which feature (the largest attribution on the one-hot input e_i), how its
neurons compare with the target's, the loss with one component vs batch top-k on one-hot inputs,
the scrubbed / anti-scrubbed ablation test, and the count of dead, mono-, duo- and polysemantic
components. Functions return arrays; `analyse` collects scalars for the run summary and draws the
figures.
"""
from __future__ import annotations

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np

from paramdecomp.methods import apd
from paramdecomp.runs import figures
from paramdecomp.core import lowrank, pytree, sparsity
from paramdecomp.toy_models import data, resid_mlp


def _check_all_mlp_weights(params, state: apd.State) -> None:
  want = {f"layers/{i}/{w}" for i in params["layers"] for w in ("W_in", "W_out")}
  if set(state.factors) != want:
    raise ValueError(f"the ResidMLP analyses need every MLP weight decomposed: {sorted(want)}, "
                     f"got {sorted(state.factors)}")


def feature_attributions(params, state: apd.State, cfg) -> jax.Array:
  """[n_features, C] attributions on the one-hot inputs e_i (value 1)."""
  n = params["W_E"].shape[1]
  return apd.attributions(resid_mlp.apply, params, state, jnp.eye(n), cfg)


def component_contributions(params, state: apd.State, feature, relu: bool = False):
  """[C, neurons] `resid_mlp.neuron_contributions` of each component on its own."""
  _check_all_mlp_weights(params, state)
  mats = {p: lowrank.components(f) for p, f in state.factors.items()}
  return jax.vmap(lambda ms: resid_mlp.neuron_contributions(pytree.replace(params, ms), feature,
                                                            relu))(mats)


def diag_relu_contributions(params, state: apd.State) -> jax.Array:
  """[C, n_features] how much component c alone adds to output i for the input e_i (through
  ReLU neurons, direct path): the summed ReLU neuron contributions."""
  n = params["W_E"].shape[1]
  return jax.vmap(lambda i: component_contributions(params, state, i, relu=True).sum(-1),
                  out_axes=1)(jnp.arange(n))


def count_components(diag: np.ndarray, cutoff: float) -> dict:
  """Components by how many features they represent (diagonal ReLU contribution > cutoff)."""
  n_repr = (np.asarray(diag) > cutoff).sum(1)
  return {"dead": int((n_repr == 0).sum()), "monosemantic": int((n_repr == 1).sum()),
          "duosemantic": int((n_repr == 2).sum()), "polysemantic": int((n_repr >= 3).sum())}


def _mse_per_sample(y, y_ref):
  return jnp.mean((y - y_ref) ** 2, axis=-1)


def one_hot_losses(params, state: apd.State, cfg, key, n_samples: int, batch_size: int):
  """Per-sample MSE to the target on one-active-feature inputs (values U[-1, 1]), with exactly
  one component active (top-1) and with batch top-k; and the number of components batch top-k
  keeps. Returns (feature [N], mse_top1 [N], mse_batch_topk [N], n_active [N])."""
  n = params["W_E"].shape[1]
  apply = resid_mlp.apply

  @jax.jit
  def one_batch(k, params, state):
    x = data.exactly_n_active(k, batch_size, n, 1, -1.0, 1.0)
    y_star = apply(params, x)
    a = apd.attributions(apply, params, state, x, cfg)
    top1 = sparsity.topk_mask(a, 1)
    batch = sparsity.batch_topk_mask(a, cfg.topk)
    run = lambda m: _mse_per_sample(apd.masked_apply(apply, params, state, m, x), y_star)
    return jnp.argmax(jnp.abs(x), axis=1), run(top1), run(batch), batch.sum(1)

  outs = [one_batch(jax.random.fold_in(key, i), params, state)
          for i in range(max(1, n_samples // batch_size))]
  return tuple(np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(4))


def scrub_masks(key, best: jax.Array, live: jax.Array, x: jax.Array, n_ablate: int):
  """([B, C], [B, C]) masks (1 = kept) over the live components with n_ablate of them ablated
  per sample: excluding ('scrubbed') or including ('anti-scrubbed') the components responsible
  for the sample's active features. Components that are not live stay off, as in every top-k
  pass they never enter. best: [n_features] responsible component of each feature; live: [C]
  bool, true at least for every component in `best`."""
  c = live.shape[0]
  active = (x != 0).astype(x.dtype)                                   # [B, n]
  resp = jnp.zeros((x.shape[0], c), x.dtype).at[:, best].add(active) > 0   # [B, C]
  r = jax.random.uniform(key, (x.shape[0], c))

  def keep(candidate, score):
    chosen = sparsity.topk_mask(jnp.where(candidate, score, -jnp.inf), n_ablate) > 0
    return (live & ~(chosen & candidate)).astype(x.dtype)

  # scrubbed: a random n_ablate of the live components not responsible for an active feature;
  # anti-scrubbed: the responsible ones first (score 2 > any uniform), then random live others
  return keep(live & ~resp, r), keep(live, jnp.where(resp, 2.0, r))


def ideal_masked_apply(params, x: jax.Array, keep: jax.Array) -> jax.Array:
  """[B, n] output of the ideal one-component-per-feature decomposition of the target with only
  the features in keep [B, n] (1 = kept) on. Feature i's component reads the residual stream
  through the dual of its embedding only, W_in W_E e_i e_i^T W_E^+, and writes only what W_U reads
  as output i, (W_E^T)^+ e_i e_i^T W_E^T W_out; what no feature reads or writes (outside the span
  of W_E) stays on. The components sum to the target's weights exactly (keep = 1 is the target),
  and each is rank one per matrix. Scrubbing it costs exactly the target's own interference on
  the ablated features' outputs (what the MLP writes to output j when feature j is off), which a
  decomposition whose components each write only their own feature's output cannot avoid."""
  w_e = params["W_E"]                                          # [d, n]
  chex.assert_equal_shape([x, keep])
  dual = jnp.linalg.pinv(w_e)                                  # [n, d] W_E^+
  drop = 1.0 - keep
  r = x @ w_e.T
  for i in range(len(params["layers"])):
    layer = params["layers"][str(i)]
    r_in = r - ((r @ dual.T) * drop) @ w_e.T                   # ablated features' duals removed
    out = jax.nn.relu(r_in @ layer["W_in"].T) @ layer["W_out"].T
    r = r + out - ((out @ w_e) * drop) @ dual                  # ablated features' outputs removed
  return r @ w_e


def scrub_losses(params, state: apd.State, cfg, best, live, key, data_cfg, n_samples: int,
                 batch_size: int):
  """Per-sample MSE to the target of the scrubbed, anti-scrubbed and batch top-k forward passes
  on training-distribution samples with at least one active feature, then of the scrubbed and
  anti-scrubbed passes of `ideal_masked_apply` with the same ablations (feature i kept iff its
  responsible component best[i] is); last, whether the sample has a positive active feature
  (all-negative inputs leave every ReLU off, so no ablation changes much there)."""
  n = params["W_E"].shape[1]
  apply = resid_mlp.apply
  n_ablate = int(np.asarray(live).sum()) // 2

  @jax.jit
  def one_batch(k, params, state):
    kx, km = jax.random.split(k)
    x = data.sparse_features(kx, batch_size, n, data_cfg.p, data_cfg.lo, data_cfg.hi)
    y_star = apply(params, x)
    scrub, anti = scrub_masks(km, best, live, x, n_ablate)
    topk = apd.mask_from(apd.attributions(apply, params, state, x, cfg), cfg, x)
    run = lambda m: _mse_per_sample(apd.masked_apply(apply, params, state, m, x), y_star)
    ideal = lambda m: _mse_per_sample(ideal_masked_apply(params, x, m[:, best]), y_star)
    return (jnp.any(x != 0, axis=1), run(scrub), run(anti), run(topk), ideal(scrub),
            ideal(anti), jnp.any(x > 0, axis=1))

  outs = [one_batch(jax.random.fold_in(key, i), params, state)
          for i in range(max(1, n_samples // batch_size))]
  nz, *losses = (np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(7))
  return tuple(v[nz] for v in losses)


def analyse(params, state: apd.State, cfg, tcfg, key, workdir: str, n_samples: int = 20_000,
            batch_size: int = 256, cutoff: float = 0.1, draw: bool = True) -> dict:
  """The §1.9 analyses: scalars for the summary JSON, figures as PNGs in `workdir`."""
  _check_all_mlp_weights(params, state)
  out = {"target": resid_mlp.report(params, tcfg.data.p, jax.random.fold_in(key, 0))}
  out["features"], feats = feature_summary(params, state, cfg)
  diag = np.asarray(diag_relu_contributions(params, state))         # [C, n]
  out["component_counts"] = {**count_components(diag, cutoff), "cutoff": cutoff}
  out["one_hot"], per_feature = one_hot_summary(params, state, cfg, jax.random.fold_in(key, 1),
                                                n_samples, batch_size)
  out["scrubbing"], scrubbed = scrubbing_summary(params, state, cfg, feats,
                                                 jax.random.fold_in(key, 2), tcfg.data,
                                                 n_samples, batch_size)
  if draw and jax.process_index() == 0:
    out["figures"] = draw_figures(params, feats, per_feature, scrubbed, workdir)
  return out


def feature_summary(params, state: apd.State, cfg) -> tuple[dict, dict]:
  """Which component carries each feature (the largest attribution on e_i), how dominant it is,
  and how its neuron contributions compare with the target's: (the summary's 'features',
  {'best' [n], 'live' [C], 'target_nc' [n, neurons], 'comp_nc' [n, neurons]})."""
  n = params["W_E"].shape[1]
  attr = np.asarray(feature_attributions(params, state, cfg))       # [n, C]
  order = np.sort(attr, axis=1)[:, ::-1]
  best = attr.argmax(1)
  second_ratio = order[:, 1] / np.maximum(order[:, 0], 1e-30)
  target_nc = np.stack([np.asarray(resid_mlp.neuron_contributions(params, i)) for i in range(n)])
  comp_nc = np.stack([np.asarray(component_contributions(params, state, i))[best[i]]
                      for i in range(n)])
  cos = np.sum(target_nc * comp_nc, 1) / np.maximum(
      np.linalg.norm(target_nc, axis=1) * np.linalg.norm(comp_nc, axis=1), 1e-30)
  live = np.zeros(attr.shape[1], bool)
  live[best] = True
  out = {
      "distinct_best_components": int(live.sum()),
      "single_dominant_fraction": float(np.mean(second_ratio <= 0.5)),
      "second_to_first_attribution_median": float(np.median(second_ratio)),
      "neuron_contribution_cosine_median": float(np.median(cos)),
      "neuron_contribution_cosine_ge_0.9_fraction": float(np.mean(cos >= 0.9)),
      "features_sharing_a_best_component": int(n - live.sum()),
  }
  if len(params["layers"]) > 1:
    out.update(off_main_layer_shares(params, target_nc, comp_nc))
  return out, dict(best=best, live=live, target_nc=target_nc, comp_nc=comp_nc)


def off_main_layer_shares(params, target_nc: np.ndarray, comp_nc: np.ndarray) -> dict:
  """Cross-layer representations: the median share of each feature's neuron contribution (the
  target's, and its best component's; [n, neurons], the layers' neurons in order) that lies
  outside the layer holding most of it."""
  bounds = np.cumsum([0] + [layer["W_in"].shape[0] for layer in params["layers"].values()])
  per_layer = lambda nc: np.stack([np.abs(nc[:, a:b]).sum(1) for a, b in
                                   zip(bounds[:-1], bounds[1:])], 1)
  off_main = lambda nc: 1 - per_layer(nc).max(1) / np.maximum(per_layer(nc).sum(1), 1e-30)
  return {"target_off_main_layer_share_median": float(np.median(off_main(target_nc))),
          "component_off_main_layer_share_median": float(np.median(off_main(comp_nc)))}


def one_hot_summary(params, state: apd.State, cfg, key, n_samples: int,
                    batch_size: int) -> tuple[dict, tuple]:
  """`one_hot_losses` per feature: (the summary's 'one_hot', (top-1 MSE, batch top-k MSE, active
  components) per feature, each [n], NaN for a feature no sample drew)."""
  n = params["W_E"].shape[1]
  feat, mse1, msek, n_act = one_hot_losses(params, state, cfg, key, n_samples, batch_size)
  per_feat = lambda v: np.array([v[feat == i].mean() if np.any(feat == i) else np.nan
                                 for i in range(n)])
  f_top1, f_batch, f_active = per_feat(mse1), per_feat(msek), per_feat(n_act)
  return {
      "n_samples": int(feat.size),
      "mse_top1_mean": float(np.nanmean(f_top1)), "mse_top1_median": float(np.nanmedian(f_top1)),
      "mse_batch_topk_mean": float(np.nanmean(f_batch)),
      "mse_batch_topk_median": float(np.nanmedian(f_batch)),
      "active_components_mean": float(np.nanmean(f_active)),
      "features_needing_more_than_one_component": int(np.sum(f_active > 1.5)),
  }, (f_top1, f_batch, f_active)


def scrubbing_summary(params, state: apd.State, cfg, feats: dict, key, data_cfg, n_samples: int,
                      batch_size: int) -> tuple[dict, dict]:
  """`scrub_losses` with the responsible components of `feature_summary`: (the summary's
  'scrubbing', {'scrub', 'anti', 'topk', 'ideal_scrub', 'ideal_anti': per-sample MSE [N],
  'mono': the monosemantic baseline})."""
  n = params["W_E"].shape[1]
  d_mlp = sum(layer["W_in"].shape[0] for layer in params["layers"].values())
  live = feats["live"]
  scrub, anti, topk, ideal_scrub, ideal_anti, pos = scrub_losses(
      params, state, cfg, jnp.asarray(feats["best"]), jnp.asarray(live), key, data_cfg,
      n_samples, batch_size)
  mono = resid_mlp.monosemantic_mse(n, d_mlp, data_cfg.p)
  out = {"n_samples": int(scrub.size), "n_ablated": int(live.sum()) // 2,
         "scrubbed_mse_median": float(np.median(scrub)),
         "anti_scrubbed_mse_median": float(np.median(anti)),
         "anti_over_scrubbed_median_ratio": _ratio(np.median(anti), np.median(scrub)),
         "scrubbed_mse_mean": float(scrub.mean()), "anti_scrubbed_mse_mean": float(anti.mean()),
         # the same sample under both ablations (inputs whose features are all negative pass no
         # ReLU, so ablating their components changes little: the histograms are bimodal)
         "per_sample_ratio_ge_10_fraction": float(np.mean(anti >= 10 * scrub)),
         "topk_mse_mean": float(topk.mean()), "topk_mse_median": float(np.median(topk)),
         "monosemantic_baseline_mse": mono}
  # the same ablations of the ideal rank-1 per-feature decomposition: what the target's own
  # interference costs when only the other features' components can write it
  for name, v in (("scrubbed", ideal_scrub), ("anti_scrubbed", ideal_anti)):
    out[f"ideal_{name}_mse_mean"] = float(v.mean())
    out[f"ideal_{name}_mse_median"] = float(np.median(v))
  # the same on the samples with a positive active feature, where the MLP is on
  out["positive_input_fraction"] = float(pos.mean())
  for name, v in (("scrubbed", scrub), ("anti_scrubbed", anti), ("ideal_scrubbed", ideal_scrub),
                  ("ideal_anti_scrubbed", ideal_anti), ("topk", topk)):
    out[f"{name}_mse_mean_positive"] = float(v[pos].mean())
  # how far each ablation raises the MSE of the unablated APD model (its batch top-k pass on the
  # same samples, the line the paper draws over the histograms), on all samples and on those
  # with a positive active feature
  for name, v in (("scrubbed", scrub), ("anti", anti)):
    for sub, sel in (("", slice(None)), ("_positive", pos)):
      out[f"{name}_over_topk_mean_ratio{sub}"] = _ratio(v[sel].mean(), topk[sel].mean())
      out[f"{name}_over_topk_median_ratio{sub}"] = _ratio(np.median(v[sel]),
                                                          np.median(topk[sel]))
  return out, dict(scrub=scrub, anti=anti, topk=topk, ideal_scrub=ideal_scrub,
                   ideal_anti=ideal_anti, mono=mono)


def _ratio(a, b) -> float:
  return float(a / max(b, 1e-30))


def draw_figures(params, feats: dict, per_feature: tuple, scrubbed: dict,
                 workdir: str) -> list[str]:
  """The §1.9 figures in `workdir`: the target's response curves, the neuron contributions of
  the first ten features (target and best component), one-hot MSE, the scrubbing histograms."""
  n = params["W_E"].shape[1]
  values = jnp.linspace(0.0, 1.0, 51)
  curves = np.stack([np.asarray(resid_mlp.response(params, i, values)) for i in range(n)])
  f_top1, f_batch, f_active = per_feature
  s = scrubbed
  return [
      figures.response_curves(np.asarray(values), curves, 42,
                              os.path.join(workdir, "target_response.png")),
      figures.neuron_heatmaps(feats["target_nc"][:10], feats["comp_nc"][:10], feats["best"][:10],
                              os.path.join(workdir, "neuron_contributions.png")),
      figures.one_hot_mse(f_top1, f_batch, f_active, os.path.join(workdir, "one_hot_mse.png")),
      figures.scrub_histograms(s["scrub"], s["anti"], float(s["topk"].mean()), s["mono"],
                               os.path.join(workdir, "scrubbing.png"),
                               ideal=(float(s["ideal_scrub"].mean()),
                                      float(s["ideal_anti"].mean()))),
  ]
