"""Comparison of fnn's gradients against jax.grad and finite differences."""

from fnn.check.numeric import numerical_vjp, rel_error

__all__ = ["numerical_vjp", "rel_error"]
