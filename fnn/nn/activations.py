"""Every activation gate as a parameter-free layer, and activations by name.

    Relu, Sigmoid, Tanh, Softplus, Silu                  elementwise, no options
    LeakyRelu(alpha), Elu(alpha), Gelu(approximate)      elementwise, with options
    Maxout(pieces)     the max over groups of `pieces` consecutive units: (N, D) -> (N, D // pieces)
"""

from __future__ import annotations

import fnn.ops as ops
from fnn.nn.combinators import Layer, stateless


def Relu() -> Layer:
    """max(0, x)."""
    return stateless("relu", lambda x: ops.relu(x))


def Sigmoid() -> Layer:
    """1 / (1 + exp(-x))."""
    return stateless("sigmoid", lambda x: ops.sigmoid(x))


def Tanh() -> Layer:
    """tanh(x)."""
    return stateless("tanh", lambda x: ops.tanh(x))


def Softplus() -> Layer:
    """log(1 + exp(x))."""
    return stateless("softplus", lambda x: ops.softplus(x))


def Silu() -> Layer:
    """x * sigmoid(x) (swish)."""
    return stateless("silu", lambda x: ops.silu(x))


def LeakyRelu(alpha: float = 0.01) -> Layer:
    """x for x > 0, alpha * x otherwise."""
    return stateless("leaky_relu", lambda x: ops.leaky_relu(x, alpha=alpha))


def Elu(alpha: float = 1.0) -> Layer:
    """x for x > 0, alpha * (exp(x) - 1) otherwise."""
    return stateless("elu", lambda x: ops.elu(x, alpha=alpha))


def Gelu(approximate: bool = False) -> Layer:
    """x * Phi(x) (exact), or its tanh approximation."""
    return stateless("gelu", lambda x: ops.gelu(x, approximate=approximate))


def Maxout(pieces: int) -> Layer:
    """Max over groups of `pieces` consecutive entries of the last axis: (.., D) -> (.., D/pieces).

    Put it after a Dense(units * pieces) layer to get the maxout unit of Goodfellow et al.
    """
    if not isinstance(pieces, int) or pieces < 1:
        raise ValueError(f"Maxout pieces must be a positive int, got {pieces!r}")

    def output_shape(s):
        if s[-1] % pieces:
            raise ValueError(f"Maxout({pieces}): the last axis ({s[-1]}) must be divisible by "
                             f"{pieces}")
        return s[:-1] + (s[-1] // pieces,)

    layer = stateless("maxout", lambda x: ops.maxout(x, pieces=pieces, axis=-1), output_shape)
    return layer


ACTIVATIONS = {"relu": Relu, "sigmoid": Sigmoid, "tanh": Tanh, "softplus": Softplus,
               "silu": Silu, "leaky_relu": LeakyRelu, "elu": Elu, "gelu": Gelu}
"""The activation layers by name (what `activation=` and `--activation` accept)."""


def Activation(name: str, **options) -> Layer:
    """An activation layer by name (see ACTIVATIONS; Maxout needs pieces, so it is not here)."""
    try:
        return ACTIVATIONS[name](**options)
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of "
                         f"{', '.join(sorted(ACTIVATIONS))}") from None
