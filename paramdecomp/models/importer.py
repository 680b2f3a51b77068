"""PyTorch-style state dicts (safetensors, .npz, .pt) <-> the params pytree of our model families,
through one name-mapping table per family.

A table is a list of `Rule`s: a tensor name of the state dict (after a family prefix such as
'bert.' or 'model.' is stripped), the leaf or leaves of ours it fills, and its layout:

- 'vector': a bias or norm scale; the leaf is its reshape (a query bias [H, dh] from [H*dh]).
- 'table':  an embedding table [rows, d], as it is.
- 'linear': a torch.nn.Linear weight [out, in]: transposed; the leaf is [*in, *out] with its
  first `n_in` axes the input (an attention out kernel [H, dh, d] has n_in = 2).
- 'conv1d': GPT-2's Conv1D weight [in, out]: as it is, the leaf [*in, *out].
- 'tied':   a copy of another rule's tensor (GPT-2's lm_head.weight = wte.weight): optional; if
  present it must equal that tensor.

A rule naming several leaves is a fused tensor (GPT-2's c_attn = [q | k | v]), split along its
output axis. The tables cover every variant of the family: a rule whose leaves the model lacks
(biases of a bias-free model, an untied unembedding) is dropped, and any leaf of the model that
no rule fills is an error. Every problem (missing, unexpected and mis-shaped tensors, leaves no
rule fills) is collected and raised at once in one `WeightImportError`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from paramdecomp.core import pytree

LAYOUTS = ("vector", "table", "linear", "conv1d", "tied")
EXTRAS_HINT = "pip install 'paramdecomp[models]'"


class WeightImportError(ValueError):
  """A state dict that does not fit the model: every problem in one message."""


@dataclasses.dataclass(frozen=True)
class Rule:
  theirs: str
  ours: tuple[str, ...]
  layout: str
  n_in: int = 1


@dataclasses.dataclass(frozen=True)
class Family:
  """A naming scheme: ``rules(n_layers) -> [Rule]``, the prefixes stripped from state dict names,
  and regexes of tensors that are not weights (buffers, heads we do not model)."""
  name: str
  rules: Callable[[int], list[Rule]]
  prefixes: tuple[str, ...] = ()
  ignore: tuple[str, ...] = ()


def _r(theirs, ours, layout, n_in=1):
  return Rule(theirs, (ours,) if isinstance(ours, str) else tuple(ours), layout, n_in)


def _bert_rules(n_layers: int) -> list[Rule]:
  out = [_r("embeddings.word_embeddings.weight", "embed/embedding", "table"),
         _r("embeddings.position_embeddings.weight", "pos_embed/embedding", "table"),
         _r("embeddings.token_type_embeddings.weight", "seg_embed/embedding", "table"),
         _r("embeddings.LayerNorm.weight", "ln_embed/scale", "vector"),
         _r("embeddings.LayerNorm.bias", "ln_embed/bias", "vector")]
  for i in range(n_layers):
    t, o = f"encoder.layer.{i}.", f"block_{i}/"
    for nm in ("query", "key", "value"):
      out += [_r(f"{t}attention.self.{nm}.weight", f"{o}attn/{nm}/kernel", "linear"),
              _r(f"{t}attention.self.{nm}.bias", f"{o}attn/{nm}/bias", "vector")]
    for theirs, ours, n_in in (("attention.output.dense", "attn/out", 2),
                               ("intermediate.dense", "mlp/fc_in", 1),
                               ("output.dense", "mlp/fc_out", 1)):
      out += [_r(f"{t}{theirs}.weight", f"{o}{ours}/kernel", "linear", n_in),
              _r(f"{t}{theirs}.bias", f"{o}{ours}/bias", "vector")]
    for theirs, ours in (("attention.output.LayerNorm", "ln1"), ("output.LayerNorm", "ln2")):
      out += [_r(f"{t}{theirs}.weight", f"{o}{ours}/scale", "vector"),
              _r(f"{t}{theirs}.bias", f"{o}{ours}/bias", "vector")]
  return out


def _gpt2_rules(n_layers: int) -> list[Rule]:
  out = [_r("wte.weight", "embed/embedding", "table"),
         _r("wpe.weight", "pos_embed/embedding", "table"),
         _r("lm_head.weight", "embed/embedding", "tied"),
         _r("ln_f.weight", "ln_f/scale", "vector"), _r("ln_f.bias", "ln_f/bias", "vector")]
  for i in range(n_layers):
    t, o = f"h.{i}.", f"block_{i}/"
    qkv = [f"{o}attn/{nm}/" for nm in ("query", "key", "value")]
    out += [_r(f"{t}attn.c_attn.weight", [q + "kernel" for q in qkv], "conv1d"),
            _r(f"{t}attn.c_attn.bias", [q + "bias" for q in qkv], "vector")]
    for theirs, ours, n_in in (("attn.c_proj", "attn/out", 2), ("mlp.c_fc", "mlp/fc_in", 1),
                               ("mlp.c_proj", "mlp/fc_out", 1)):
      out += [_r(f"{t}{theirs}.weight", f"{o}{ours}/kernel", "conv1d", n_in),
              _r(f"{t}{theirs}.bias", f"{o}{ours}/bias", "vector")]
    for theirs, ours in (("ln_1", "ln1"), ("ln_2", "ln2")):
      out += [_r(f"{t}{theirs}.weight", f"{o}{ours}/scale", "vector"),
              _r(f"{t}{theirs}.bias", f"{o}{ours}/bias", "vector")]
  return out


def _llama_rules(n_layers: int) -> list[Rule]:
  out = [_r("embed_tokens.weight", "embed/embedding", "table"),
         _r("norm.weight", "ln_f/scale", "vector"),
         _r("lm_head.weight", "unembed/kernel", "linear"),
         _r("lm_head.weight", "embed/embedding", "tied")]
  for i in range(n_layers):
    t, o = f"layers.{i}.", f"block_{i}/"
    for theirs, ours, n_in in (("self_attn.q_proj", "attn/query", 1),
                               ("self_attn.k_proj", "attn/key", 1),
                               ("self_attn.v_proj", "attn/value", 1),
                               ("self_attn.o_proj", "attn/out", 2),
                               ("mlp.gate_proj", "mlp/gate", 1), ("mlp.up_proj", "mlp/up", 1),
                               ("mlp.down_proj", "mlp/down", 1)):
      out += [_r(f"{t}{theirs}.weight", f"{o}{ours}/kernel", "linear", n_in),
              _r(f"{t}{theirs}.bias", f"{o}{ours}/bias", "vector")]
    out += [_r(f"{t}input_layernorm.weight", f"{o}ln1/scale", "vector"),
            _r(f"{t}post_attention_layernorm.weight", f"{o}ln2/scale", "vector")]
  return out


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("bert", _bert_rules, prefixes=("bert.",),
           ignore=(r"embeddings\.position_ids", r"pooler\..*", r"cls\..*")),
    Family("gpt2", _gpt2_rules, prefixes=("transformer.",),
           ignore=(r"h\.\d+\.attn\.(bias|masked_bias)",)),
    Family("llama", _llama_rules, prefixes=("model.",),
           ignore=(r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)),
)}


def family(name: str) -> Family:
  if name not in FAMILIES:
    raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}")
  return FAMILIES[name]


def n_layers_of(template) -> int:
  """The number of `block_{i}` entries of a params pytree (a Flax {'params': ...} or bare)."""
  inner = template.get("params", template)
  return sum(1 for k in inner if re.fullmatch(r"block_\d+", k))


def _leaves(template) -> tuple[dict[str, Any], str]:
  """({path under the params root: leaf}, the root prefix 'params/' or '')."""
  root = "params/" if "params" in template else ""
  flat = {p: v for p, v in zip(pytree.leaf_paths(template), jax.tree.leaves(template))}
  return {p[len(root):]: v for p, v in flat.items()}, root


def _out_size(shape, n_in):
  return math.prod(shape[n_in:])


def _theirs_shape(rule: Rule, shapes: Sequence[tuple]) -> tuple:
  """The state dict shape a rule expects, from the shapes of the leaves it fills."""
  s0 = shapes[0]
  if rule.layout in ("table", "tied"):
    return tuple(s0)
  if rule.layout == "vector":
    return (sum(math.prod(s) for s in shapes),)
  n_in = math.prod(s0[:rule.n_in])
  out = sum(_out_size(s, rule.n_in) for s in shapes)
  return (out, n_in) if rule.layout == "linear" else (n_in, out)


def _split(rule: Rule, t: np.ndarray, shapes: Sequence[tuple]) -> list[np.ndarray]:
  """A state dict tensor -> the leaves it fills (transposed, split, reshaped)."""
  if rule.layout == "linear":
    t = t.T
  if rule.layout == "vector":
    sizes = [math.prod(s) for s in shapes]
  else:
    sizes = [_out_size(s, rule.n_in) for s in shapes]
  parts = np.split(t, np.cumsum(sizes)[:-1], axis=-1) if len(shapes) > 1 else [t]
  return [p.reshape(s) for p, s in zip(parts, shapes)]


def _join(rule: Rule, leaves: Sequence[np.ndarray]) -> np.ndarray:
  """The inverse of `_split`: our leaves -> the state dict tensor."""
  if rule.layout in ("table", "tied"):
    return np.asarray(leaves[0])
  if rule.layout == "vector":
    return np.concatenate([np.reshape(v, -1) for v in leaves])
  mats = [np.reshape(v, (math.prod(v.shape[:rule.n_in]), -1)) for v in leaves]
  t = np.concatenate(mats, axis=-1)
  return t.T if rule.layout == "linear" else t


def active_rules(fam: Family, template) -> list[Rule]:
  """The family's rules whose leaves all exist in the model (the variant's table)."""
  leaves, _ = _leaves(template)
  rules = [r for r in fam.rules(n_layers_of(template)) if all(o in leaves for o in r.ours)]
  # a 'tied' copy stands in only where no rule of the model fills that name itself (an untied
  # Llama's lm_head.weight is its unembedding, a tied one's a copy of the embedding)
  own = {r.theirs for r in rules if r.layout != "tied"}
  return [r for r in rules if r.layout != "tied" or r.theirs not in own]


def _strip(name: str, fam: Family) -> str:
  for pre in fam.prefixes:
    if name.startswith(pre):
      return name[len(pre):]
  return name


def to_params(state_dict: Mapping[str, Any], fam: str | Family, template) -> dict:
  """A params pytree shaped like `template` (arrays or `jax.ShapeDtypeStruct`s, e.g.
  ``jax.eval_shape(init, key, cfg)``) from a state dict {name: array} of family `fam`; dtypes
  follow the template. Raises `WeightImportError` listing every missing, unexpected and
  mis-shaped tensor and every leaf of the model the family's table does not fill."""
  fam = family(fam) if isinstance(fam, str) else fam
  leaves, root = _leaves(template)
  sd = {}
  for name, t in state_dict.items():
    sd.setdefault(_strip(name, fam), (name, t))
  rules = active_rules(fam, template)
  covered = {o for r in rules for o in r.ours}
  uncovered = sorted(set(leaves) - covered)
  known = {r.theirs for r in rules}
  unexpected = sorted(orig for k, (orig, _) in sd.items() if k not in known
                      and not any(re.fullmatch(p, k) for p in fam.ignore))
  missing, misshaped, values = [], [], {}
  for r in rules:
    if r.theirs not in sd:
      if r.layout != "tied":
        missing.append(r.theirs)
      continue
    orig, t = sd[r.theirs]
    t = _to_numpy(t)
    want = _theirs_shape(r, [tuple(leaves[o].shape) for o in r.ours])
    if tuple(t.shape) != want:
      misshaped.append(f"{orig}: {tuple(t.shape)}, expected {want} for {', '.join(r.ours)}")
      continue
    if r.layout == "tied":
      if r.ours[0] in values and not np.array_equal(values[r.ours[0]], t):
        misshaped.append(f"{orig}: differs from the tensor it is tied to ({r.ours[0]}); this "
                         "model ties them: use an untied variant")
      continue
    for o, v in zip(r.ours, _split(r, t, [tuple(leaves[o].shape) for o in r.ours])):
      values[o] = v
  problems = ([f"missing ({len(missing)}): {missing}"] if missing else []) + (
      [f"unexpected ({len(unexpected)}): {unexpected}"] if unexpected else []) + (
      [f"mis-shaped ({len(misshaped)}): {misshaped}"] if misshaped else []) + (
      [f"model leaves the {fam.name!r} table does not fill ({len(uncovered)}): {uncovered}"]
      if uncovered else [])
  if problems:
    raise WeightImportError(f"the state dict does not fit this {fam.name!r} model:\n  "
                            + "\n  ".join(problems))
  flat = {root + p: np.asarray(values[p], dtype=leaves[p].dtype) for p in leaves}
  return pytree.replace(template, flat)


def to_state_dict(params, fam: str | Family) -> dict[str, np.ndarray]:
  """The state dict of `params` in the family's (PyTorch / Hugging Face) naming, without
  prefixes; the inverse of `to_params`."""
  fam = family(fam) if isinstance(fam, str) else fam
  leaves, _ = _leaves(params)
  # contiguous: writers such as safetensors' save_file copy the raw buffer, not the strided view
  return {r.theirs: np.ascontiguousarray(_join(r, [np.asarray(leaves[o]) for o in r.ours]))
          for r in active_rules(fam, params)}


def _to_numpy(t) -> np.ndarray:
  if isinstance(t, np.ndarray):
    return t
  if hasattr(t, "detach"):   # a torch tensor (bfloat16 has no numpy dtype: go through float32)
    t = t.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":
      t = t.float()
    return t.numpy()
  return np.asarray(t)


def config_from_hf(hf: Mapping[str, Any]):
  """(family, our model config) from a Hugging Face config.json dict of a BERT, GPT-2 or Llama
  model (the fields that decide the architecture; anything we do not model is refused)."""
  from paramdecomp.models import bert, transformer
  kind = hf.get("model_type")
  if kind == "bert":
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"BERT with {hf['position_embedding_type']!r} positions is not modelled")
    act = {"gelu": "gelu", "gelu_new": "gelu_tanh"}.get(hf["hidden_act"])
    if act is None:
      raise ValueError(f"BERT's hidden_act {hf['hidden_act']!r} is not GELU")
    return "bert", bert.model_config(
        vocab_size=hf["vocab_size"], max_len=hf["max_position_embeddings"],
        type_vocab_size=hf["type_vocab_size"], d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
        d_mlp=hf["intermediate_size"], norm_eps=hf["layer_norm_eps"], mlp=act,
        pad_id=hf.get("pad_token_id") or 0)
  if kind == "gpt2":
    act = {"gelu_new": "gelu_tanh", "gelu": "gelu"}.get(hf.get("activation_function", "gelu_new"))
    if act is None:
      raise ValueError(f"GPT-2's activation_function {hf['activation_function']!r} is not GELU")
    d = hf["n_embd"]
    return "gpt2", transformer.model_config(
        vocab_size=hf["vocab_size"], max_len=hf["n_positions"], d_model=d,
        n_layers=hf["n_layer"], n_heads=hf["n_head"], d_mlp=hf.get("n_inner") or 4 * d,
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp=act, tied=True, bias=True)
  if kind == "llama":
    if hf.get("hidden_act", "silu") != "silu" or hf.get("rope_scaling"):
      raise ValueError("only Llama with SiLU gates and plain rotary positions is modelled")
    return "llama", transformer.model_config(
        vocab_size=hf["vocab_size"], max_len=hf["max_position_embeddings"],
        d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        d_head=hf.get("head_dim") or 0, d_mlp=hf["intermediate_size"],
        norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), positions="rotary",
        rope_base=float(hf.get("rope_theta", 10000.0)), mlp="swiglu",
        tied=bool(hf.get("tie_word_embeddings", False)),
        bias=bool(hf.get("attention_bias", False)))
  raise ValueError(f"model_type {kind!r}: the importer knows bert, gpt2 and llama")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """{name: numpy array} from a .safetensors, .npz or .pt / .pth / .bin (PyTorch) file. The
  first needs `safetensors` (the 'models' extra), the last `torch` (the 'torch' extra)."""
  ext = os.path.splitext(path)[1].lower()
  if ext == ".safetensors":
    try:
      from safetensors.numpy import load_file
    except ImportError:
      raise ImportError(f"reading {path} needs safetensors: {EXTRAS_HINT}") from None
    return dict(load_file(path))
  if ext == ".npz":
    with np.load(path) as z:
      return {k: z[k] for k in z.files}
  if ext in (".pt", ".pth", ".bin"):
    try:
      import torch
    except ImportError:
      raise ImportError(f"reading {path} needs torch: pip install 'paramdecomp[torch]'") from None
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, Mapping):
      raise WeightImportError(f"{path} holds a {type(sd).__name__}, not a state dict "
                              "(save model.state_dict(), not the model)")
    return {k: _to_numpy(v) for k, v in sd.items()}
  raise ValueError(f"{path}: unknown format {ext!r}; reads .safetensors, .npz, .pt/.pth/.bin")


def load(path: str, fam: str, template) -> dict:
  """`to_params` of the state dict in file `path`."""
  return to_params(read_state_dict(path), fam, template)
