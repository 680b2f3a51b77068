"""The bars of L3D's four toys (docs/methods/l3d.md §3.5, §3.7; results/l3d_toys.md), checked on
a decomposition's summary (scripts/reproduce_l3d_toys.py runs them over seeds).

The bars (`check`): TM1 reconstruction <= 0.12 with every feature matched by its own subnetwork
(|cos| >= 0.95, encoder and decoder maps); TM2 <= 0.065 with coefficient correlation >= 0.9; TM3
one live subnetwork per co-active group and every spare dead; TM4 reconstruction <= 0.35, the five
features served by five distinct subnetworks, each with specificity >= 0.8 x the ceiling of its
feature's own best direction (`feature_direction_specificity`).
"""
from __future__ import annotations

TOYS = ("tm1", "tm2", "tm3", "tm4")
TM4_CEILING_SHARE = 0.8


def check(toy: str, s: dict) -> dict[str, bool]:
  """{bar: met} for the summary `s` of a decomposition of `toy`; 'all' is every bar."""
  r = s["recon_heldout"]
  if toy == "tm1":
    t = s["tms"]
    bars = {"recon<=0.12": r <= 0.12, "features_matched": t["distinct_matches"] == 5
            and min(t["cos_dec"]) >= 0.95 and min(t["cos_enc"]) >= 0.95}
  elif toy == "tm2":
    bars = {"recon<=0.065": r <= 0.065, "coef_corr>=0.9": s["coef_corr"] >= 0.9}
  elif toy in ("tm3", "tm3-code"):
    # the live subnetworks' groups are exactly 0..G-1 once each: one per group, the spares dead
    bars = {"one_live_per_group_spares_dead": s["groups"]["one_live_per_group"]}
  elif toy in ("tm4", "tm4-code"):
    bars = {"recon<=0.35": r <= 0.35,
            "distinct_features": sorted(s["feature_of_subnet"]) == list(range(5)),
            "specificity>=0.8xceiling": min(ceiling_shares(s)) >= TM4_CEILING_SHARE}
  else:
    raise ValueError(f"no bars for toy {toy!r}; use one of {TOYS}")
  bars["all"] = all(bars.values())
  return bars


def ceiling_shares(s: dict) -> list[float]:
  """TM4: each subnetwork's specificity over that of its feature's own best direction."""
  ceil = s["feature_direction_specificity"]
  return [round(sp / ceil[f], 4) for sp, f in zip(s["specificity"], s["feature_of_subnet"])]
