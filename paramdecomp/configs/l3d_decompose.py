"""L3D decompositions of the toy targets with the paper's settings (docs/methods/l3d.md §3.4-3.5).

  python scripts/decompose_l3d.py --config=paramdecomp/configs/l3d_decompose.py:tm1 \
      --config.target_dir=runs/l3d_tm1 --workdir=runs/l3d_tm1_dec
Every variant: 1000 points, batch 32, 1000 epochs, Adam lr 0.01 x 0.8 every 100 epochs, top-k
fraction 0.1, all tensors (biases included) decomposed. tm1: 5 rank-1 subnetworks; tm2: 10
rank-1; tm3: 10 rank-3 (the rank shown in the paper); tm3-code: 8 rank-2 (the reference code's
30-10-30, six groups); tm4: 5 rank-2 with a 10-epoch warm start
at k = 0.999 (the reference code's setting for the squares model).
--config.zero_rows=keep decomposes on plain p = 0.05 sparsity (all-zero rows kept; see
docs/notes/l3d_tm1_tm2_bounds.md). `<toy>-const` (e.g. tm2-const) takes the constant all-zeros
reference output, §3.1's first candidate, instead of another sample's output; tm2-const also
warm-starts for 10 epochs. The issue's TM1-TM3 figures are reached with it, not with the batch
reference (results/l3d_toys.md).
"""
from paramdecomp.runs.decompose_l3d import default_config

_VARIANTS = {"tm1": (5, 1, 0), "tm2": (10, 1, 0), "tm3": (10, 3, 0), "tm3-code": (8, 2, 0),
             "tm4": (5, 2, 10), "tm4-code": (5, 2, 10)}


def get_config(variant: str = "tm1"):
  toy, const = variant.removesuffix("-const"), variant.endswith("-const")
  if toy not in _VARIANTS:
    raise ValueError(f"unknown L3D toy {variant!r}; use one of {list(_VARIANTS)}, each "
                     "optionally with -const")
  n_v, rank, warm = _VARIANTS[toy]
  c = default_config()
  c.l3d.update(dict(n_subnets=n_v, rank=rank, topk=0.1))
  c.warm_start_epochs = warm
  if toy == "tm1":  # TM1 decomposes the TMS encoder and decoder as separate tensors
    c.target_view = "untied"
  if const:
    c.l3d.reference = "constant"
    if toy == "tm2":  # without it some subnetworks end dead (docs/notes/l3d_reference_output.md)
      c.warm_start_epochs = max(warm, 10)
  return c
