"""Test-wide settings: float64 so that closed forms can be checked to 1e-6.

The package itself never flips this flag; only the test session does.
"""
import jax

jax.config.update("jax_enable_x64", True)
