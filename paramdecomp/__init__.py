"""paramdecomp: parameter-space interpretability methods over pure JAX functions."""
__version__ = "0.1.0"
