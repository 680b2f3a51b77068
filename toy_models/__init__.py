"""Toy models with known ground truth, as pure ``apply(params, x)`` functions."""
