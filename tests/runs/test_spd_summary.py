"""SPD summary pieces against hand-built subcomponents: the ResidMLP W_out analysis (one per
neuron, and mixed), the norm ratios behind the non-negligible counts, and the paper figures'
absolute counts, and a later ResidMLP layer's firing neurons."""
import ml_collections
import numpy as np

from paramdecomp.core import lowrank
from paramdecomp.methods import spd
from paramdecomp.runs.spd_summary import (counts, figure_counts, norm_ratios, resid_mlp_analysis,
                                          w_out_neurons)


def test_w_out_neurons_matches_active_subcomponents_to_firing_neurons():
  rng = np.random.default_rng(0)
  d_resid, d_mlp, C, n = 6, 3, 5, 4
  sub = np.zeros((C, d_resid, d_mlp))
  for c, j in enumerate([0, 1, 2]):   # subcomponents 0-2: neuron c's column alone
    sub[c, :, j] = rng.normal(size=d_resid)
  sub[3, :, 0] = 1.0                  # 3: mostly neuron 0 (share 0.8, under 0.9)
  sub[3, :, 1] = 0.5
  # 4 never active
  pre = np.array([[1.0, -1.0, 2.0],   # input 0: neurons 0 and 2 fire
                  [-1.0, 1.0, -1.0],  # input 1: neuron 1
                  [1.0, 1.0, 1.0],    # input 2: all three
                  [-1.0, -1.0, -1.0]])  # input 3: none
  active = np.zeros((n, C), bool)
  active[0, [0, 2]] = True            # exactly the firing neurons
  active[1, [1, 3]] = True            # neuron 1 and (via 3) neuron 0: not equal
  active[2, [0, 1, 2, 3]] = True      # {0, 1, 2}: equal (3 also maps to neuron 0)
  out = w_out_neurons(active, sub, pre)   # input 3: nothing active, nothing fires: equal
  assert out["inputs_active_equal_firing"] == 3
  assert out["active_per_input"] == (2 + 2 + 4 + 0) / 4
  assert out["firing_neurons_per_input"] == (2 + 1 + 3 + 0) / 4
  assert out["subcomponents_active_somewhere"] == 4
  assert out["single_neuron_subcomponents"] == 3
  assert out["neurons_of_active_subcomponents"] == 3   # 3 maps to neuron 0, already counted


def test_norm_ratios_and_counts_of_hand_built_subcomponents():
  # |u_c| |v_c| = 2, 0.5, 0.04, 1: ratios to the largest 1, 0.5, 0.25, 0.02 in falling order
  U = np.array([2.0, 0.5, 0.04, 1.0])[:, None, None] * np.eye(3)[None, :, :1]
  V = np.ones((4, 1, 1))
  state = spd.State(sub={"W": lowrank.Factors(U=U, V=V)}, ci=None)
  np.testing.assert_allclose(norm_ratios(state)["W"], [1.0, 0.5, 0.25, 0.02])
  assert counts(state, 0.01) == {"W": 4} and counts(state, 0.3) == {"W": 2}


def test_figure_counts_sum_column_norms_over_features_and_cut_absolutely():
  # W_c = u_c v_c^T [2, 3]: sum_f |W_c[:, f]| = |u_c| sum_f |v_cf|
  U = np.array([[[3.0], [4.0]], [[0.006], [0.008]], [[0.0], [0.001]]])     # |u| = 5, 0.01, 0.001
  V = np.array([[[1.0], [-1.0], [0.0]], [[1.0], [0.5], [-0.5]], [[1.0], [1.0], [1.0]]])
  h = lowrank.Factors(U=np.array([[[1.0], [0.0]], [[0.0], [0.01]]]),   # |hidden_c|_F = 1, 0.01
                      V=np.array([[[1.0], [0.0]], [[0.0], [1.0]]]))
  state = spd.State(sub={"W": lowrank.Factors(U=U, V=V), "hidden": h}, ci=None)
  out = figure_counts(spd.subcomponents(state), cut=0.017, cut_hidden=0.009)
  np.testing.assert_allclose(out["W_measure"], [10.0, 0.02, 0.003], rtol=1e-6)
  np.testing.assert_allclose(out["hidden_measure"], [1.0, 0.01], rtol=1e-6)
  assert (out["W"], out["hidden"]) == (2, 2)
  out = figure_counts(spd.subcomponents(state), cut=0.03, cut_hidden=0.0115)   # the reference's 5-2+ID cuts
  assert (out["W"], out["hidden"]) == (1, 1)


def test_resid_mlp_analysis_reads_later_layers_neurons_from_the_whole_stream(tmp_path):
  """Two layers, W_E = I: layer 0's neuron fires on e_0 and writes -5 into the direction layer
  1's neuron reads, so layer 1 fires on e_1 alone (through the embedding alone it would fire on
  both). Its one W_out subcomponent is active on e_1 alone: equal to the firing on both inputs.
  W_in: e_0 has one subcomponent over the layers, e_1 two."""
  params = {"W_E": np.eye(2), "layers": {
      "0": {"W_in": np.array([[1.0, 0.0]]), "W_out": np.array([[0.0], [-5.0]])},
      "1": {"W_in": np.array([[1.0, 1.0]]), "W_out": np.array([[1.0], [0.0]])}}}
  one = lambda: lowrank.Factors(U=np.array([[[1.0], [0.0]]]), V=np.ones((1, 1, 1)))
  state = spd.State(sub={"layers/0/W_out": one(), "layers/1/W_out": one()}, ci=None)
  ci = {"layers/0/W_out": np.array([[1.0], [0.0]]), "layers/1/W_out": np.array([[0.0], [1.0]]),
        "layers/0/W_in": np.array([[0.9, 0.0], [0.0, 0.0]]),    # e_0: one in layer 0,
        "layers/1/W_in": np.array([[0.0, 0.0], [0.9, 0.8]])}    # e_1: two in layer 1
  c = ml_collections.ConfigDict(dict(analysis=dict(active=0.5, one_hot=1.0)))
  out = resid_mlp_analysis(c, params, state, None, ci, str(tmp_path))
  for layer in ("0", "1"):
    assert out[f"layers/{layer}/W_out/firing_neurons_per_input"] == 0.5
    assert out[f"layers/{layer}/W_out/inputs_active_equal_firing"] == 2
  assert out["all_layers/W_in_per_feature"] == [1, 2]
  assert out["all_layers/W_in_features_with_one"] == 1
  assert out["all_layers/W_out_active_on_every_input"] == 0
