"""Every activation gate as a parameter-free layer, and activations by name.

Relu, Sigmoid, Tanh, Softplus, Silu                  elementwise, no options
LeakyRelu(alpha), Elu(alpha), Gelu(approximate)      elementwise, with options
Maxout(pieces)     the max over groups of `pieces` consecutive units: (N, D) -> (N, D // pieces)
"""

from __future__ import annotations

import fnn.ops as ops
from fnn.nn.combinators import Layer, stateless


def Relu() -> Layer:
    """max(0, x), as a parameter-free layer.

    Returns:
        The Layer ("relu").
    """
    return stateless("relu", lambda x: ops.relu(x))


def Sigmoid() -> Layer:
    """1 / (1 + exp(-x)), as a parameter-free layer.

    Returns:
        The Layer ("sigmoid").
    """
    return stateless("sigmoid", lambda x: ops.sigmoid(x))


def Tanh() -> Layer:
    """tanh(x), as a parameter-free layer.

    Returns:
        The Layer ("tanh").
    """
    return stateless("tanh", lambda x: ops.tanh(x))


def Softplus() -> Layer:
    """log(1 + exp(x)), as a parameter-free layer.

    Returns:
        The Layer ("softplus").
    """
    return stateless("softplus", lambda x: ops.softplus(x))


def Silu() -> Layer:
    """x * sigmoid(x) (swish), as a parameter-free layer.

    Returns:
        The Layer ("silu").
    """
    return stateless("silu", lambda x: ops.silu(x))


def LeakyRelu(alpha: float = 0.01) -> Layer:
    """x for x > 0, alpha * x otherwise, as a parameter-free layer.

    Args:
        alpha: the slope for x <= 0.

    Returns:
        The Layer ("leaky_relu").
    """
    return stateless("leaky_relu", lambda x: ops.leaky_relu(x, alpha=alpha))


def Elu(alpha: float = 1.0) -> Layer:
    """x for x > 0, alpha * (exp(x) - 1) otherwise, as a parameter-free layer.

    Args:
        alpha: the value approached as x -> -inf is -alpha.

    Returns:
        The Layer ("elu").
    """
    return stateless("elu", lambda x: ops.elu(x, alpha=alpha))


def Gelu(approximate: bool = False) -> Layer:
    """x * Phi(x) (exact), or its tanh approximation, as a parameter-free layer.

    Args:
        approximate: use the tanh approximation.

    Returns:
        The Layer ("gelu").
    """
    return stateless("gelu", lambda x: ops.gelu(x, approximate=approximate))


def Maxout(pieces: int) -> Layer:
    """Max over groups of `pieces` consecutive entries of the last axis: (.., D) -> (.., D/pieces).

    Put it after a Dense(units * pieces) layer to get the maxout unit of Goodfellow et al.

    Args:
        pieces: the size of each group.

    Returns:
        The Layer ("maxout").

    Raises:
        ValueError: `pieces` is not a positive int; (from init) the last axis of the input shape
            is not divisible by `pieces`.
    """
    if not isinstance(pieces, int) or pieces < 1:
        raise ValueError(f"Maxout pieces must be a positive int, got {pieces!r}")

    def output_shape(s):
        if s[-1] % pieces:
            raise ValueError(
                f"Maxout({pieces}): the last axis ({s[-1]}) must be divisible by {pieces}"
            )
        return s[:-1] + (s[-1] // pieces,)

    layer = stateless("maxout", lambda x: ops.maxout(x, pieces=pieces, axis=-1), output_shape)
    return layer


ACTIVATIONS = {
    "relu": Relu,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "softplus": Softplus,
    "silu": Silu,
    "leaky_relu": LeakyRelu,
    "elu": Elu,
    "gelu": Gelu,
}
"""The activation layers by name (what `activation=` and `--activation` accept)."""


def Activation(name: str, **options) -> Layer:
    """An activation layer by name (see ACTIVATIONS; Maxout needs pieces, so it is not here).

    Args:
        name: "relu", "sigmoid", "tanh", "softplus", "silu", "leaky_relu", "elu" or "gelu".
        **options: the activation's own options (LeakyRelu's and Elu's alpha, Gelu's
            approximate).

    Returns:
        The Layer.

    Raises:
        ValueError: `name` is not one of ACTIVATIONS.
        TypeError: an option the activation does not take.
    """
    try:
        return ACTIVATIONS[name](**options)
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {', '.join(sorted(ACTIVATIONS))}"
        ) from None
