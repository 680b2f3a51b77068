"""L3D decompositions of the toy targets with the authors' settings (docs/methods/l3d.md §3.4-3.5).

  python scripts/decompose_l3d.py --config=paramdecomp/configs/l3d_decompose.py:tm1 \
      --config.target_dir=runs/l3d_tm1 --workdir=runs/l3d_tm1_dec
Every variant: 1000 points, batch 32, 1000 epochs, Adam lr 0.01 x 0.8 every 100 epochs, top-k
fraction 0.1, all tensors (biases included) decomposed. tm1: 5 rank-1 subnetworks; tm2: 10
rank-1; tm3: 10 rank-3 (the rank shown in the paper); tm3-code: 8 rank-2 (the reference code's
30-10-30, six groups); tm4: 5 rank-2 with a 10-epoch warm start at k = 0.999 (the reference
code's setting for the squares model).

Reference outputs (docs/methods/l3d.md §3.1.1), as the authors' scripts pass them: the batch-mean
output for tm1 (TMS) and tm4 (squares), zeros for tm2 and tm3 (circuits). tm2 also warm-starts for
10 epochs (without it 1-2 subnetworks die: docs/notes/l3d_reference_output.md).
`<toy>-batch` (e.g. tm1-batch) takes another sample's output instead, as the paper's text
describes. --config.zero_rows=keep decomposes on plain p = 0.05 sparsity (all-zero rows kept;
docs/notes/l3d_tm1_tm2_bounds.md).
"""
from paramdecomp.runs.decompose_l3d import default_config

# n_subnets, rank, warm-start epochs, the authors' reference
_VARIANTS = {"tm1": (5, 1, 0, "mean"), "tm2": (10, 1, 10, "zero"), "tm3": (10, 3, 0, "zero"),
             "tm3-code": (8, 2, 0, "zero"), "tm4": (5, 2, 10, "mean"),
             "tm4-code": (5, 2, 10, "mean")}


def get_config(variant: str = "tm1"):
  toy, paper_text = variant.removesuffix("-batch"), variant.endswith("-batch")
  if toy not in _VARIANTS:
    raise ValueError(f"unknown L3D toy {variant!r}; use one of {list(_VARIANTS)}, each "
                     "optionally with -batch")
  n_v, rank, warm, reference = _VARIANTS[toy]
  c = default_config()
  c.l3d.update(dict(n_subnets=n_v, rank=rank, topk=0.1, reference=reference))
  c.warm_start_epochs = warm
  if toy == "tm1":  # TM1 decomposes the TMS encoder and decoder as separate tensors
    c.target_view = "untied"
    c.zero_rows = "reject"  # the paper's data; its target trains on plain rows (l3d_toys.py)
  if paper_text:
    c.l3d.reference = "batch"
    if toy == "tm2":  # the paper's-text runs of results/l3d_toys.md had no warm start
      c.warm_start_epochs = 0
  return c
