"""Dtype promotion as JAX does it, for the gates' forwards."""

import jax
import jax.numpy as jnp


def inexact(x):
    """x as JAX's transcendental functions take it: integer and bool inputs cast to the float
    dtype JAX promotes them to (jnp.sin's); float inputs unchanged."""
    if jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        return x
    return jnp.asarray(x).astype(jax.eval_shape(jnp.sin, x).dtype)
