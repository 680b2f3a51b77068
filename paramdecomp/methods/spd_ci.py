"""SPD's causal-importance functions and leaky hard sigmoids (docs/methods/spd.md §2).

A CI function maps what a site (one product of a decomposed weight) sees to pre-sigmoid values
z [*pos, C], one per subcomponent and position. The family, one interface (`init_ci`,
`ci_logits`):

  mlp         one scalar MLP per subcomponent on its own inner activation h_c = v_c . a
              (the paper's): z_c = w_out_c . GELU(w_in_c h_c + b_in_c) + b_out_c, run for all C
              at once as broadcast products (no loop over c). d_gate = 0: z_c = w_c h_c + b_c.
  vector_mlp  one MLP per site on the site's input activation a [*pos, d_in] -> C outputs
              (the later library's `vector_mlp`).
  shared_mlp  one MLP over the concatenated inputs of all sites -> C outputs per site.

Inner activations are not detached (the reference's `detach_inputs=False`): gradients reach V
through the CI functions too.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from paramdecomp.core.scan import map_chunks

CI_FNS = ("mlp", "vector_mlp", "shared_mlp")
GELUS = ("exact", "tanh")   # the reference's exact GELU, or the tanh approximation (faster on CPU)
SIGMOIDS = ("paper", "head")
SHARED = "shared"   # the key of the one CI function of `shared_mlp` in State.ci


class ScalarMLP(NamedTuple):
  """C independent scalar MLPs R -> R with d hidden units: every array leads with C."""
  w_in: jax.Array    # [C, d]
  b_in: jax.Array    # [C, d]
  w_out: jax.Array   # [C, d]
  b_out: jax.Array   # [C]


class Affine(NamedTuple):
  """C scalar affine gates z_c = w_c h_c + b_c (d_gate = 0)."""
  w: jax.Array   # [C]
  b: jax.Array   # [C]


class MLP(NamedTuple):
  """A dense MLP, GELU between layers: ws[i] [n_i, n_{i+1}], bs[i] [n_{i+1}]."""
  ws: tuple
  bs: tuple


COMPONENT_TYPES = (ScalarMLP, Affine)   # split over the components mesh axis with the U, V


def _normal(key, shape, std, dtype):
  return std * jax.random.normal(key, shape, dtype)


def init_scalar(key, C: int, d_gate: int, dtype=jnp.float32):
  """The reference init: w_in ~ N(0, 2) (Kaiming, ReLU gain, fan-in 1), w_out ~ N(0, 1/d),
  biases 0; d_gate = 0: w ~ N(0, 1) (linear gain, fan-in 1), b = 0."""
  k1, k2 = jax.random.split(key)
  if d_gate == 0:
    return Affine(_normal(k1, (C,), 1.0, dtype), jnp.zeros((C,), dtype))
  return ScalarMLP(_normal(k1, (C, d_gate), math.sqrt(2.0), dtype), jnp.zeros((C, d_gate), dtype),
                   _normal(k2, (C, d_gate), 1.0 / math.sqrt(d_gate), dtype),
                   jnp.zeros((C,), dtype))


def init_mlp(key, n_in: int, d_gate: int, n_out: int, dtype=jnp.float32) -> MLP:
  """Kaiming-normal layers (ReLU gain into the hidden layer, linear gain out), biases 0;
  d_gate = 0: one affine layer."""
  sizes = [n_in] + ([d_gate] if d_gate else []) + [n_out]
  keys = jax.random.split(key, len(sizes) - 1)
  ws, bs = [], []
  for i, (k, a, b) in enumerate(zip(keys, sizes, sizes[1:])):
    gain = math.sqrt(2.0) if i < len(sizes) - 2 else 1.0
    ws.append(_normal(k, (a, b), gain / math.sqrt(a), dtype))
    bs.append(jnp.zeros((b,), dtype))
  return MLP(tuple(ws), tuple(bs))


def _gelu(a, gelu: str):
  if gelu == "tanh":
    return jax.nn.gelu(a, approximate=True)
  # the exact GELU as the reference's torch kernel writes it, a (1 + erf(a / sqrt 2)) / 2: on XLA
  # CPU about 3x faster than jax.nn.gelu's erfc form (docs/notes/spd_speed.md); the two differ
  # only below a ~ -5, where both are within float32 rounding of 0
  return a * _normal_cdf(a)


def _normal_cdf(a):
  """Φ(a) = (1 + erf(a / sqrt 2)) / 2."""
  return 0.5 * (1.0 + jax.lax.erf(a * (1.0 / math.sqrt(2.0))))


# Rows of h per chunk of the scalar MLPs: [rows, C, d_gate] hidden units of about 2^15 floats stay
# in cache. Autodiff of the whole [N, C, d_gate] hidden layer keeps several such arrays in memory
# and its backward runs 2-4x slower on CPU (docs/notes/spd_speed.md); each chunk's backward
# recomputes its hidden layer instead (cheap elementwise work).
_CHUNK_FLOATS = 1 << 15


def run_scalar(fn, h: jax.Array, gelu: str = "exact") -> jax.Array:
  """[*pos, C] logits of C scalar gates on inner activations h [*pos, C]."""
  if isinstance(fn, Affine):
    return h * fn.w + fn.b
  C, d = fn.w_in.shape
  flat = h.reshape(-1, C)
  n = flat.shape[0]
  rows = max(1, _CHUNK_FLOATS // (C * d))
  pad = -n % rows if n > rows else 0
  if pad:   # zero rows, sliced off again: they get no gradient
    flat = jnp.concatenate([flat, jnp.zeros((pad, C), flat.dtype)])
  if gelu == "exact":
    chunk = lambda x: _scalar_mlp_exact(fn.w_in, fn.b_in, fn.w_out, fn.b_out, x)
  else:
    chunk = jax.checkpoint(lambda x: _scalar_mlp(fn, x, gelu))
  z = map_chunks(chunk, [flat], rows)
  return z[:n].reshape(h.shape)


def _scalar_mlp(fn: ScalarMLP, h: jax.Array, gelu: str) -> jax.Array:
  """[n, C] the C scalar MLPs on h [n, C], batched over subcomponents."""
  hidden = _gelu(_pre(fn.w_in, fn.b_in, h), gelu)
  return (jnp.einsum("cnd,cd->cn", hidden, fn.w_out) + fn.b_out[:, None]).T


def _pre(w_in, b_in, h) -> jax.Array:
  """[C, n, d] hidden pre-activations of the scalar MLPs on h [n, C]."""
  # subcomponent-major [C, n, d]: on CPU twice as fast as [n, C, d] (the gradients' sums over
  # the n positions then run as batched products over C)
  return h.T[:, :, None] * w_in[:, None, :] + b_in[:, None, :]


# The exact-GELU scalar MLPs with a written backward: XLA CPU runs autodiff's backward of the
# chunk (even rematerialised) as about eight separate loops over [C, n, d]; this one needs one erf
# and one exp per unit and fuses into about three, 2.7x faster (docs/notes/spd_speed.md). Reverse
# mode only (no jvp through the CI functions).
@jax.custom_vjp
def _scalar_mlp_exact(w_in, b_in, w_out, b_out, h):
  return _scalar_mlp(ScalarMLP(w_in, b_in, w_out, b_out), h, "exact")


def _scalar_mlp_exact_fwd(w_in, b_in, w_out, b_out, h):
  return _scalar_mlp_exact(w_in, b_in, w_out, b_out, h), (w_in, b_in, w_out, h)


def _scalar_mlp_exact_bwd(res, g):
  w_in, b_in, w_out, h = res
  hT, gT = h.T, g.T                                                                 # [C, n]
  t = _pre(w_in, b_in, h)
  phi = _normal_cdf(t)
  d_w_out = jnp.einsum("cn,cnd->cd", gT, t * phi)
  # d gelu / dt = Φ(t) + t φ(t)
  dt = gT[:, :, None] * w_out[:, None, :] * (
      phi + t * jnp.exp(-0.5 * t * t) * (1.0 / math.sqrt(2.0 * math.pi)))
  return (jnp.einsum("cn,cnd->cd", hT, dt), dt.sum(1), d_w_out, g.sum(0),
          jnp.einsum("cnd,cd->cn", dt, w_in).T)


_scalar_mlp_exact.defvjp(_scalar_mlp_exact_fwd, _scalar_mlp_exact_bwd)


def run_mlp(fn: MLP, a: jax.Array, gelu: str = "exact") -> jax.Array:
  """[*pos, n_out] the MLP on a [*pos, n_in]."""
  for i, (w, b) in enumerate(zip(fn.ws, fn.bs)):
    a = a @ w + b
    if i < len(fn.ws) - 1:
      a = _gelu(a, gelu)
  return a


def init_ci(key, kind: str, sites: list, C: int, d_gate: int, dtype=jnp.float32) -> dict:
  """{site name: CI function} (`shared_mlp`: {SHARED: one MLP}); sites: (name, d_in) pairs."""
  if kind == "mlp":
    return {n: init_scalar(jax.random.fold_in(key, i), C, d_gate, dtype)
            for i, (n, _) in enumerate(sites)}
  if kind == "vector_mlp":
    return {n: init_mlp(jax.random.fold_in(key, i), d, d_gate, C, dtype)
            for i, (n, d) in enumerate(sites)}
  if kind == "shared_mlp":
    return {SHARED: init_mlp(key, sum(d for _, d in sites), d_gate, C * len(sites), dtype)}
  raise ValueError(f"ci_fn {kind!r} is not one of {CI_FNS}")


def ci_logits(kind: str, ci: dict, inner: dict, acts: dict, gelu: str = "exact") -> dict:
  """{site: z [*pos, C]} from the inner activations {site: [*pos, C]} (mlp) or the sites'
  inputs {site: [*pos, d_in]} (vector_mlp, shared_mlp; the sites' positions must agree)."""
  if kind == "mlp":
    return {s: run_scalar(ci[s], h, gelu) for s, h in inner.items()}
  for s, a in acts.items():
    if a is None:
      raise ValueError(f"ci_fn={kind!r} reads the site's input, but {s!r} is a lookup (an "
                       "embedding) whose input is ids: use ci_fn='mlp'")
  if kind == "vector_mlp":
    return {s: run_mlp(ci[s], a, gelu) for s, a in acts.items()}
  names = list(acts)
  pos = {acts[s].shape[:-1] for s in names}
  if len(pos) != 1:
    raise ValueError(f"shared_mlp needs every site at the same positions, got {sorted(pos)}")
  z = run_mlp(ci[SHARED], jnp.concatenate([acts[s] for s in names], axis=-1), gelu)
  C = z.shape[-1] // len(names)
  return {s: z[..., i * C:(i + 1) * C] for i, s in enumerate(names)}


# ---- leaky hard sigmoids --------------------------------------------------------------------

def lower_leaky(z: jax.Array, alpha: float = 0.01) -> jax.Array:
  """alpha z (z <= 0), z (0 < z <= 1), 1 (z > 1); the derivative of that piecewise function
  (what spd-paper's `torch.where` gives: alpha, 1, 0)."""
  return jnp.where(z > 0, jnp.where(z > 1, 1.0, z), alpha * z).astype(z.dtype)


def upper_leaky(z: jax.Array, alpha: float = 0.01) -> jax.Array:
  """0 (z <= 0), z (0 < z <= 1), 1 + alpha (z - 1) (z > 1), with its piecewise derivative."""
  return jnp.where(z > 1, 1 + alpha * (z - 1), jnp.where(z > 0, z, 0.0)).astype(z.dtype)


@jax.custom_vjp
def _lower_head(z, alpha):
  return jnp.clip(z, 0.0, 1.0)


def _lower_head_fwd(z, alpha):
  return jnp.clip(z, 0.0, 1.0), (z, alpha)


def _lower_head_bwd(res, g):
  z, alpha = res
  grad = jnp.where(z <= 0, jnp.where(g < 0, alpha * g, 0.0), jnp.where(z <= 1, g, 0.0))
  return grad.astype(z.dtype), None


_lower_head.defvjp(_lower_head_fwd, _lower_head_bwd)


def lower_leaky_head(z: jax.Array, alpha: float = 0.01) -> jax.Array:
  """The later library's lower sigmoid (goodfire-ai/spd HEAD, `LowerLeakyHardSigmoidFunction`):
  the value is clip(z, 0, 1) (never negative), the gradient below 0 is alpha times the incoming
  gradient where that is negative (pushing z up) and 0 otherwise; 1 on (0, 1], 0 above."""
  return _lower_head(z, jnp.asarray(alpha, z.dtype))


def sigmoids(z: jax.Array, kind: str = "paper", alpha: float = 0.01):
  """(g for the masks, g_up for the importance loss) from logits z."""
  if kind == "paper":
    return lower_leaky(z, alpha), upper_leaky(z, alpha)
  if kind == "head":
    return lower_leaky_head(z, alpha), upper_leaky(z, alpha)
  raise ValueError(f"sigmoid {kind!r} is not one of {SIGMOIDS}")
