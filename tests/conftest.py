"""Oracle tests run in float64 (docs/methods/oracles.md §6)."""
import jax

jax.config.update("jax_enable_x64", True)
