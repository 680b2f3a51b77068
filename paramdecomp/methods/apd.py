"""APD: attribution-based parameter decomposition (docs/methods/apd.md §1).

The decomposed weights are the leaves of the target's params pytree matched by `cfg.decompose`
(regular expressions over '/'-joined paths). Each gets C rank-m components P_c = U_c V_c^T. Nothing
here knows the architecture: every forward pass is ``apply(params', x)`` with some leaves replaced.

The method surface (the same for every method):

    default_config()                         the hyperparameters
    validate(cfg)                            raises ConfigError on a bad cfg
    init(key, params, cfg) -> State          validates cfg; the components, normalised
    loss(state, params, x, key, *, apply, cfg) -> (value, metrics)
    make_update(apply, cfg, batch_fn, optimizer)
                                             the one training step ``(TrainState, frozen) ->
                                             (TrainState, metrics)``, with the unit-norm
                                             projection and normalisation when cfg asks for them
    normalize(state, cfg) -> State           the unit-norm option (§1.6)

`State` holds ``factors: {path: Factors}``, each leading with the C axis (`COMPONENT_TYPES`).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import ml_collections

from paramdecomp.core import config as cfglib
from paramdecomp.core import lowrank, pytree, sparsity, train
from paramdecomp.core.factored import matrix_views, trace_matmuls
from paramdecomp.core.grads import directional_derivatives
from paramdecomp.core.inputs import check_batched
from paramdecomp.core.lowrank import Factors



class State(NamedTuple):
  """APD's trainable state: ``factors[path]`` the C components of the decomposed weight at path
  (U [C, a, m], V [C, b, m]), in the order of the target's params."""
  factors: dict[str, Factors]


FactorMap = dict[str, Factors]   # a State's factors, as the helpers below take them
COMPONENT_TYPES = (Factors,)  # what `sharding.shard_state` splits over the components axis
ATTRIBUTIONS = ("gradient", "ablation", "activation")
ATTRIBUTION_MODELS = ("target", "apd")
SPARSITY = ("batch_topk", "topk")
DIVERGENCES = ("mse", "kl")
ATTRIBUTION_OUTPUTS = ("raw", "log_probs")
FAITHFULNESS_NORMS = ("entries", "per_weight", "relative")


def default_config() -> ml_collections.ConfigDict:
  """APD hyperparameters; the TMS 5-2 values of the paper (§1.8) as defaults."""
  return ml_collections.ConfigDict(dict(
      decompose=("W",),          # path patterns of the weights to decompose
      C=5,                       # number of components
      m=3,                       # rank of each component per weight (0: full, min(a, b))
      init="xavier_normal",      # or kaiming_uniform
      init_scale=1.0,
      attribution="gradient",    # gradient | ablation | activation
      attribution_model="target",  # target | apd: whose gradients the attributions use
      sparsity="batch_topk",     # batch_topk | topk
      topk=0.211,                # mean active components per sample (integer k for topk)
      exact_topk=False,          # batch top-k keeps as many entries as the batch has nonzero
                                 # input features (toy models whose input is the features)
      distil_from_target=False,  # the last component is always on and never selected
      faithfulness_coeff=1.0,
      faithfulness_norm="entries",  # entries: sum_l |dW_l|^2 / N; per_weight: mean_l |dW_l|^2 /
                                 # n_l; relative: mean_l |dW_l|^2 / |W_l|^2 (classifiers, LMs:
                                 # a large embedding does not swamp the small weights)
      minimality_coeff=1.0,
      minimality_divergence="mse",  # mse | kl: KL(softmax(target) || softmax(masked)) over the
                                 # last axis, for outputs that are logits (classifiers, LMs)
      attribution_output="raw",  # raw | log_probs: gradient / ablation attributions on the
                                 # outputs as they are or on log_softmax of them (logits)
      simplicity_coeff=0.7,
      schatten_p=1.0,
      act_recon_coeff=0.0,       # hidden-activation reconstruction (ResidMLP: 1)
      act_recon_layers=(),       # patterns of decomposed weights whose outputs are matched
                                 # (empty: all of them)
      act_recon_relu=False,      # match ReLU(output), as for ResidMLP's W_in
      unit_norm_matrices=False,  # keep every V column (input side of W = U V^T) at unit norm
      formulation="topk",        # topk | lp (attribution-sparsity variant: no masks)
      lp_p=0.9,                  # p1 of the lp formulation: minimality = mean_b sum_c A_c^p1
  ))


def validate(cfg: ml_collections.ConfigDict) -> None:
  cfglib.check_fields(cfg, default_config())
  cfglib.one_of(cfg, "attribution", ATTRIBUTIONS)
  cfglib.one_of(cfg, "attribution_model", ATTRIBUTION_MODELS)
  cfglib.one_of(cfg, "sparsity", SPARSITY)
  cfglib.one_of(cfg, "formulation", ("topk", "lp"))
  cfglib.one_of(cfg, "minimality_divergence", DIVERGENCES)
  cfglib.one_of(cfg, "attribution_output", ATTRIBUTION_OUTPUTS)
  cfglib.one_of(cfg, "faithfulness_norm", FAITHFULNESS_NORMS)
  cfglib.require(cfg.formulation != "lp" or cfg.minimality_divergence == "mse",
                 "minimality_divergence", "the lp formulation's minimality is on attributions, "
                 "not outputs: leave it 'mse'")
  cfglib.require(cfg.formulation != "lp" or cfg.attribution == "gradient", "attribution",
                 "the lp formulation uses gradient attributions")
  cfglib.positive(cfg, "lp_p")
  cfglib.one_of(cfg, "init", ("xavier_normal", "kaiming_uniform"))
  cfglib.positive(cfg, "C", "topk", "schatten_p")
  cfglib.require(cfg.m >= 0, "m", f"must be >= 0 (0 = full rank), got {cfg.m}")
  cfglib.require(cfg.sparsity != "topk" or float(cfg.topk).is_integer(), "topk",
                 f"per-sample top-k needs an integer k, got {cfg.topk}")
  cfglib.require(cfg.topk <= cfg.C, "topk",
                 f"k={cfg.topk} exceeds C={cfg.C}" + (" (batch top-k keeps k components per "
                                                      "sample on average)"
                                                      if cfg.sparsity == "batch_topk" else ""))
  cfglib.require(len(cfg.decompose) > 0, "decompose", "names no weights")
  cfglib.require(not cfg.exact_topk or cfg.sparsity == "batch_topk", "exact_topk",
                 "sets the count of batch top-k; use sparsity='batch_topk'")
  cfglib.require(not cfg.distil_from_target or cfg.C >= 2, "distil_from_target",
                 "needs C >= 2 (one always-on component and at least one to select)")
  cfglib.require(cfg.act_recon_coeff >= 0, "act_recon_coeff", "must be >= 0")
  cfglib.require(cfg.formulation != "lp" or cfg.act_recon_coeff == 0, "act_recon_coeff",
                 "the lp formulation has no sparse forward pass to match activations on")


def init(key, params, cfg, *, apply: Callable | None = None, x=None) -> State:
  """Factors for every decomposed weight of `params` (the leaves matched by cfg.decompose), each
  in its matrix view [a, b] (`paramdecomp.core.factored`): with `apply` and a batch `x` (or its
  `jax.ShapeDtypeStruct`), the view of the model's first product with the leaf (contracted
  axes against the rest: a conv kernel HWIO is (H*W*I, O), a DenseGeneral query kernel
  [d, heads, d_head] is (d, heads*d_head)); without them `lowrank.default_view` (a 2-d leaf as
  it is, more axes: all but the last against the last). Checks cfg first."""
  validate(cfg)
  paths = pytree.select(params, cfg.decompose)
  views = None
  if apply is not None:
    views = matrix_views(apply, params, x, paths)
  elif x is not None:
    raise ValueError("x is used to trace apply: pass apply too")
  out = {}
  for i, (path, w) in enumerate(pytree.get(params, paths).items()):
    if views is None and w.ndim < 2:
      raise ValueError(f"APD decomposes 2-d weights, and other leaves through their matrix view; "
                       f"{path!r} of shape {w.shape} has none by default: pass apply= and x= to "
                       "apd.init to take it from the model's use")
    shape = views[path] if views else lowrank.default_view(w.shape)
    # m above min(shape) adds no capacity (P_c has rank <= min(shape)) but is allowed: the
    # paper's TMS configs take min(shape) + 1 (5-2: m = 3; 40-10: m = 11)
    rank = cfg.m or min(shape)
    out[path] = lowrank.init_factors(jax.random.fold_in(key, i), shape, cfg.C, rank,
                                     cfg.init, cfg.init_scale, w.dtype)
  return normalize(State(out), cfg)


def normalize(state: State, cfg) -> State:
  """The unit-norm option (§1.6): V columns at unit norm (identity when it is off)."""
  if not cfg.unit_norm_matrices:
    return state
  return State({p: lowrank.unit_norm_v(f) for p, f in state.factors.items()})


def project_grads(grads: State, state: State, cfg) -> State:
  """The unit-norm option's gradient projection: no V-gradient along its own (unit) column."""
  if not cfg.unit_norm_matrices:
    return grads
  return State({p: lowrank.project_out_v(grads.factors[p], f) for p, f in state.factors.items()})


def make_update(apply: Callable, cfg, batch_fn: Callable, optimizer):
  """The APD optimisation step ``(TrainState, frozen) -> (TrainState, metrics)`` (not jitted):
  `loss` on ``x = batch_fn(key)`` (``batch_fn(key, data)`` for a `train.Frozen` with data), the
  unit-norm gradient projection, the optimiser, then `normalize`. Checks cfg."""
  validate(cfg)
  loss_fn = train.loss_on_batches(loss, batch_fn, apply=apply, cfg=cfg)
  return train.make_update(loss_fn, optimizer,
                           grad_transform=lambda g, s: project_grads(g, s, cfg),
                           post_update=lambda s: normalize(s, cfg))


def check_components(params, state: State) -> None:
  """Raise a clear error when components do not fit the params they decompose."""
  comps = state.factors
  ws = pytree.get(params, list(comps))
  cs = {f.U.shape[0] for f in comps.values()}
  if len(cs) != 1:
    raise ValueError(f"all weights need the same number of components, got {cs}")
  for path, f in comps.items():
    want = lowrank.view(f)  # the leaf's matrix view: any (a, b) with a * b elements
    if ws[path].size != want[0] * want[1]:
      raise ValueError(f"components of {path!r} have shape {want}, the weight {ws[path].shape}")


def n_decomposed(params, state: State) -> int:
  """Number of entries of the decomposed weights."""
  return sum(w.size for w in pytree.get(params, list(state.factors)).values())


def _with(params, weights: dict):
  return pytree.replace(params, weights)


def _all_components(comps: FactorMap) -> dict:
  """{path: sum of all components} kept factored (the APD model's weights)."""
  return {p: lowrank.masked_lowrank(f, jnp.ones(f.U.shape[0], f.U.dtype))
          for p, f in comps.items()}


def _mean_sq_gradient_attribution(apply, params, comps: FactorMap, x, cfg) -> jax.Array:
  """[B, C] mean over outputs o of <grad_W f_o(x), P_c>^2, differentiable in the components.

  The efficient form of §1.3: <grad_W f_o, P_c> = (d f_o / d p)^T (P_c a) for each product
  p = W a of a decomposed weight, so the forward-mode tangents start at the pre-activations as
  P_c a, computed through the factors, and the dense P_c is never formed.
  """
  paths = list(comps)
  apply = _attribution_apply(apply, cfg)
  factors = {}
  if cfg.attribution_model == "apd":
    factors = jax.lax.stop_gradient(_all_components(comps))
  views = {p: lowrank.view(f) for p, f in comps.items()}
  _, uses = trace_matmuls(apply, params, factors, x, paths, views=views)
  tangents = {p: [u.apply(f.U, f.V) for u in uses[p]] for p, f in comps.items()}   # [C, ...]
  zeros = {p: [jnp.zeros_like(u.out) for u in uses[p]] for p in paths}
  fn = lambda shifts: trace_matmuls(apply, params, factors, x, paths, shifts, views)[0]
  _, dots = directional_derivatives(fn, zeros, tangents)                          # [C, B, ...]
  return jnp.mean(dots.reshape(dots.shape[:2] + (-1,)) ** 2, axis=-1).T


def _attribution_apply(apply: Callable, cfg) -> Callable:
  """The function whose outputs the gradient and ablation attributions differentiate: the model,
  or its log-probabilities (`attribution_output='log_probs'`), which drops the direction that
  shifts every logit alike and changes no prediction."""
  if cfg.attribution_output == "raw":
    return apply
  return lambda params, x: jax.nn.log_softmax(apply(params, x), axis=-1)


def attributions(apply: Callable, params, state: State, x: jax.Array, cfg) -> jax.Array:
  """[B, C] attributions of each component on each sample (§1.3), without gradient."""
  check_batched(apply, params, x)
  comps = jax.lax.stop_gradient(state.factors)
  if cfg.attribution == "gradient":
    return jnp.sqrt(_mean_sq_gradient_attribution(apply, params, comps, x, cfg))
  if cfg.attribution == "activation":
    return _activation_attribution(apply, params, comps, x)
  leaf = {p: w.shape for p, w in pytree.get(params, list(comps)).items()}
  totals = {p: lowrank.total(f).reshape(leaf[p]) for p, f in comps.items()}
  mats = {p: lowrank.components(f).reshape((-1,) + leaf[p]) for p, f in comps.items()}  # [C, ...]
  # ablation: output change when component c alone is removed from the all-components model
  apply = _attribution_apply(apply, cfg)
  full = apply(_with(params, totals), x)
  ablated = jax.vmap(lambda ms: apply(_with(params, {p: totals[p] - ms[p] for p in ms}), x))(mats)
  diff = (ablated - full[None]).reshape(ablated.shape[:2] + (-1,))
  return jnp.mean(diff**2, axis=-1).T


def _activation_attribution(apply, params, comps: FactorMap, x) -> jax.Array:
  """[B, C] sum over decomposed products of |P_c a|^2, a = the layer's input in the APD model's
  all-components forward pass (§1.3, variant 3). Activations must keep the batch axis first."""
  _, uses = trace_matmuls(apply, params, _all_components(comps), x, list(comps))
  total = 0.0
  for p, f in comps.items():
    for u in uses[p]:
      if u.pos_shape[:1] != x.shape[:1]:
        raise ValueError(f"activation attributions need batch-first activations; {p!r} meets "
                         f"an input at positions {u.pos_shape} for a batch of {x.shape[0]}")
      sq = u.sq_norms(f.U, f.V)                                   # [C, B, ...]
      total = total + jnp.sum(sq.reshape(sq.shape[:2] + (-1,)), axis=-1).T
  return total


def _forward(apply, params, x, watch=(), comps: FactorMap | None = None, mask=None):
  """Per-sample forward passes, with sample b's decomposed weights sum_c mask[b, c] P_c when
  `comps` is given (the target's otherwise): (outputs [B, ...], {path: [output of each product
  of that weight, [B, ...]]} for the paths in `watch`).

  The weights stay factored (see `paramdecomp.core.factored`) and the mask sits in the low-rank
  scale, so U and V are shared across the batch: a sample costs O(C m (a + b)) per weight.
  """

  def one(s, xb):
    ws = {} if comps is None else {p: lowrank.masked_lowrank(f, s) for p, f in comps.items()}
    y, uses = trace_matmuls(apply, params, ws, xb[None], watch)
    return y[0], {p: [u.out for u in us] for p, us in uses.items()}

  if mask is None:
    return jax.vmap(lambda xb: one(None, xb))(x)
  chex.assert_equal_shape_prefix((mask, x), 1)
  return jax.vmap(one)(mask, x)


def masked_apply(apply: Callable, params, state: State, mask: jax.Array,
                 x: jax.Array) -> jax.Array:
  """[B, ...] output with each sample's decomposed weights set to sum_c mask[b, c] P_c."""
  return _forward(apply, params, x, (), state.factors, mask)[0]


def act_recon_paths(comps: FactorMap, cfg) -> tuple[str, ...]:
  """Decomposed weights whose outputs the hidden-activation reconstruction loss matches."""
  if not cfg.act_recon_layers:
    return tuple(comps)
  paths = pytree.select({p: 0 for p in comps}, cfg.act_recon_layers)
  return tuple(paths)


def activation_mse(outs, target_outs, relu: bool) -> jax.Array:
  """mean_b sum_l |f(p_l) - f(p*_l)|^2 / sum_l d_l over every recorded product l (§1.5)."""
  f = jax.nn.relu if relu else (lambda v: v)
  pairs = [(o, t) for p in outs for o, t in zip(outs[p], target_outs[p])]
  sq = sum(jnp.sum(((f(o) - f(t)) ** 2).reshape(o.shape[0], -1), axis=1) for o, t in pairs)
  return jnp.mean(sq) / sum(o[0].size for o, _ in pairs)


def mask_from(scores: jax.Array, cfg, x: jax.Array | None = None) -> jax.Array:
  """[B, C] 0/1 mask from attributions (§1.4); x is needed only with `exact_topk`."""
  if cfg.distil_from_target:  # select among the others; the last one is always on
    mask = mask_from(scores[:, :-1], _without_distil(cfg), x)
    return jnp.concatenate([mask, jnp.ones_like(scores[:, -1:])], axis=1)
  if cfg.sparsity == "topk":
    return sparsity.topk_mask(scores, int(cfg.topk))
  if cfg.exact_topk:
    if x is None:
      raise ValueError("exact_topk counts the batch's nonzero input features: pass x")
    return sparsity.batch_top_n_mask(scores, jnp.count_nonzero(x))
  return sparsity.batch_topk_mask(scores, cfg.topk)


def _without_distil(cfg):
  c = ml_collections.ConfigDict(cfg.to_dict())
  c.distil_from_target = False
  return c


def component_use(apply: Callable, params, state: State, x: jax.Array, cfg) -> jax.Array:
  """[C] fraction of the samples of x on which each component is selected."""
  return jnp.mean(mask_from(attributions(apply, params, state, x, cfg), cfg, x), axis=0)


def faithfulness(params, comps: FactorMap, norm: str = "entries") -> jax.Array:
  """The faithfulness loss (§1.5) with dW_l = W*_l - sum_c P_c,l over the decomposed weights l:
  'entries' sum_l |dW_l|^2 / sum_l n_l (n_l: entries of W_l); 'per_weight' mean_l |dW_l|^2 / n_l
  (each weight's mean squared error counts alike, whatever its size); 'relative'
  mean_l |dW_l|^2 / |W*_l|^2 (each weight's squared relative error, free of its scale too)."""
  target = pytree.get(params, list(comps))
  sq = {p: jnp.sum((target[p] - lowrank.total(f).reshape(target[p].shape)) ** 2)
        for p, f in comps.items()}
  if norm == "entries":
    return sum(sq.values()) / sum(target[p].size for p in sq)
  if norm == "per_weight":
    return sum(sq[p] / target[p].size for p in sq) / len(sq)
  if norm == "relative":   # a zero weight would divide by zero: its error then counts as is
    scale = {p: jnp.maximum(jnp.sum(w ** 2), jnp.finfo(w.dtype).tiny) for p, w in target.items()}
    return sum(sq[p] / scale[p] for p in sq) / len(sq)
  raise ValueError(f"faithfulness norm {norm!r} is not one of {FAITHFULNESS_NORMS}")


def divergence(y: jax.Array, y_star: jax.Array, kind: str = "mse") -> jax.Array:
  """How far outputs y are from the target's y_star (same shape [B, ..., K]): 'mse' the mean of
  (y - y_star)^2 over every entry; 'kl' KL(softmax(y_star) || softmax(y)) over the last axis
  (summed over the K classes), averaged over the batch and any position axes."""
  chex.assert_equal_shape((y, y_star))
  if kind == "mse":
    return jnp.mean((y - y_star) ** 2)
  if kind == "kl":
    log_t, log_y = jax.nn.log_softmax(y_star, axis=-1), jax.nn.log_softmax(y, axis=-1)
    return jnp.mean(jnp.sum(jnp.exp(log_t) * (log_t - log_y), axis=-1))
  raise ValueError(f"divergence {kind!r} is not one of {DIVERGENCES}")


def loss(state: State, params, x: jax.Array, key, *, apply: Callable, cfg):
  """(total loss, metrics) on batch x [B, ...] (§1.5): the top-k formulation, or with
  ``cfg.formulation == 'lp'`` the L_p attribution-sparsity one. `key` is unused."""
  del key  # APD's loss is deterministic given the batch
  check_components(params, state)  # shapes only: costs nothing at run time
  check_batched(apply, params, x)
  comps = state.factors
  n = n_decomposed(params, state)
  faith = faithfulness(params, comps, cfg.faithfulness_norm)
  per_comp = sum(lowrank.schatten(f, cfg.schatten_p) for f in comps.values())  # [C]

  if cfg.formulation == "lp":
    # A_c^p1 = (mean_o <grad f_o, P_c>^2)^(p1/2); gradients flow through the attributions.
    weight = (_mean_sq_gradient_attribution(apply, params, comps, x, cfg) + 1e-16) ** (
        cfg.lp_p / 2)
    minimality = jnp.mean(jnp.sum(weight, axis=1))
    simplicity = jnp.mean(weight @ per_comp) / n
    total = (cfg.faithfulness_coeff * faith + cfg.minimality_coeff * minimality
             + cfg.simplicity_coeff * simplicity)
    return total, {"faithfulness": faith, "minimality": minimality, "simplicity": simplicity}

  watch = act_recon_paths(comps, cfg) if cfg.act_recon_coeff else ()
  if watch:
    y_star, target_outs = jax.lax.stop_gradient(_forward(apply, params, x, watch))
  else:
    y_star = jax.lax.stop_gradient(apply(params, x))
  mask = mask_from(attributions(apply, params, state, x, cfg), cfg, x)
  y_s, outs = _forward(apply, params, x, watch, comps, mask)
  metrics = {}
  if watch:
    metrics["act_recon"] = activation_mse(outs, target_outs, cfg.act_recon_relu)
  minimality = divergence(y_s, y_star, cfg.minimality_divergence)
  simplicity = jnp.mean(mask @ per_comp) / n

  total = (cfg.faithfulness_coeff * faith + cfg.minimality_coeff * minimality
           + cfg.simplicity_coeff * simplicity)
  if watch:
    total = total + cfg.act_recon_coeff * metrics["act_recon"]
  return total, {"faithfulness": faith, "minimality": minimality, "simplicity": simplicity,
                 **metrics, "active": jnp.mean(jnp.sum(mask, axis=1))}

