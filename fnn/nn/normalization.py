"""BatchNorm and LayerNorm layers (conventions: fnn/nn/combinators.py).

BatchNorm's running mean and variance live in the layer's *state*, not its params: they are
not trained by gradients but updated by the forward pass in training mode, and used in place of
the batch statistics in evaluation mode (train=False).
"""

from __future__ import annotations

import jax.numpy as jnp

import fnn.ops as ops
from fnn.nn.combinators import Layer


def BatchNorm(*, momentum: float = 0.9, eps: float = 1e-5) -> Layer:
    """Normalize each feature (the last axis: units of (N, D), channels of NHWC) over the batch.

    params: gamma, beta (C,). state: mean, var (C,), updated in training as
    running = momentum * running + (1 - momentum) * batch statistic, and used in place of the
    batch statistics in evaluation (train=False).

    Args:
        momentum: the running statistics' momentum.
        eps: added to the variance.

    Returns:
        The Layer ("batch_norm").
    """

    def init(key, input_shape):
        c = input_shape[-1]
        params = {"gamma": jnp.ones((c,), jnp.float32), "beta": jnp.zeros((c,), jnp.float32)}
        state = {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)}
        return params, state, tuple(input_shape)

    def apply(params, state, x, *, key=None, train=False):
        y, mean, var = ops.batch_norm(
            x,
            params["gamma"],
            params["beta"],
            state["mean"],
            state["var"],
            train=train,
            momentum=momentum,
            eps=eps,
        )
        return y, {"mean": mean, "var": var}

    return Layer("batch_norm", init, apply)


def LayerNorm(*, eps: float = 1e-5) -> Layer:
    """Normalize each example over its last axis, then scale by gamma and shift by beta (D,).

    Args:
        eps: added to the variance.

    Returns:
        The Layer ("layer_norm").
    """

    def init(key, input_shape):
        d = input_shape[-1]
        params = {"gamma": jnp.ones((d,), jnp.float32), "beta": jnp.zeros((d,), jnp.float32)}
        return params, {}, tuple(input_shape)

    def apply(params, state, x, *, key=None, train=False):
        return ops.layer_norm(x, params["gamma"], params["beta"], eps=eps), state

    return Layer("layer_norm", init, apply)
