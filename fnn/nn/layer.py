"""What a layer is, and the serial combinator.

Naming conventions for the whole of fnn.nn (after stax):

    init(key, input_shape) -> (params, state, output_shape)
        input_shape / output_shape: the shape of ONE example, without the batch axis,
        e.g. (28, 28, 1) for an MNIST image in NHWC layout or (64,) for a feature vector.
        params: dict of trainable arrays (the pytree that gradients are taken of);
        state:  dict of non-trainable arrays (BatchNorm's running statistics).
        Layers without parameters or state return {} for them.
    apply(params, state, x, *, key=None, train=False) -> (y, new_state)
        x and y carry a leading batch axis. `key` is a PRNG key used by stochastic layers
        (Dropout) when train=True; `train` switches BatchNorm and Dropout to training mode.

`apply` is written with fnn's gates only (fnn.ops and the operators of traced values), so the
same model is differentiated by `fnn.grad` (hand-written rules) and by `jax.grad`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax


@dataclasses.dataclass(frozen=True)
class Layer:
    """A layer: a pure (init, apply) pair (see the module docstring) and a name.

    Combinators list their sub-layers in `children` as (params key, layer) pairs; `kind` says
    how: "serial" (a chain, each child takes the previous output) or "parallel" (every child
    takes the same input). `summary` walks them; nothing else depends on them.
    """

    name: str
    init: Callable
    apply: Callable
    children: tuple = ()
    kind: str = "leaf"

    def __iter__(self):  # `init, apply = layer`, as with stax
        return iter((self.init, self.apply))

    def __repr__(self):
        if not self.children:
            return f"<Layer {self.name}>"
        return f"<Layer {self.name}: {', '.join(k for k, _ in self.children)}>"


def stateless(name: str, fn: Callable, output_shape: Callable = lambda s: s) -> Layer:
    """A layer without parameters: y = fn(x); `output_shape(input_shape)` gives y's shape."""

    def init(key, input_shape):
        return {}, {}, tuple(output_shape(tuple(input_shape)))

    def apply(params, state, x, *, key=None, train=False):
        return fn(x), state

    return Layer(name, init, apply)


def split_key(key, n: int) -> list:
    """n keys from `key`, or n Nones when there is no key (deterministic apply)."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def serial(*layers: Layer, name: str = "serial") -> Layer:
    """Layers applied one after the other. Params and state are dicts keyed '<i>_<name>'."""
    if not layers:
        raise ValueError("serial() needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"serial(): argument {i} is {type(layer).__name__}, not a Layer "
                            "(did you write nn.Relu instead of nn.Relu()?)")
    keys = tuple(f"{i}_{layer.name}" for i, layer in enumerate(layers))

    def init(key, input_shape):
        params, state, shape = {}, {}, tuple(input_shape)
        for k, layer, sub in zip(keys, layers, jax.random.split(key, len(layers))):
            params[k], state[k], shape = layer.init(sub, shape)
        return params, state, shape

    def apply(params, state, x, *, key=None, train=False):
        new_state = {}
        for k, layer, sub in zip(keys, layers, split_key(key, len(layers))):
            x, new_state[k] = layer.apply(params[k], state[k], x, key=sub, train=train)
        return x, new_state

    return Layer(name, init, apply, tuple(zip(keys, layers)), "serial")

