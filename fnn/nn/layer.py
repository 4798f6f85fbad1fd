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

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Callable

import jax
import numpy as np
from jax.extend import source_info_util

from fnn.autodiff.nans import NanOriginError
from fnn.errors import GateError


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


def check_input_shape(name: str, input_shape) -> tuple:
    """`input_shape` as a tuple of positive ints (the shape of ONE example), or a ValueError."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if shape is None or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                                and d > 0 for d in shape):
        raise ValueError(f"{name}: input_shape must be the shape of one example without the "
                         f"batch axis, a tuple of positive ints such as (28, 28, 1); got "
                         f"{input_shape!r}")
    return tuple(int(d) for d in shape)


def in_layer(error: Exception, model: str, key: str) -> None:
    """Prefix `error`'s message with the layer it came from, 'in layer mlp/1_dense: ...'.

    Nested combinators each add their key, so the message ends up with the full path from the
    outermost model. The error keeps its type and traceback (it is changed in place).
    """
    bare = getattr(error, "_fnn_bare", None)
    bare = str(error) if bare is None else bare
    path = (key,) + getattr(error, "_fnn_path", ())
    error._fnn_bare, error._fnn_path = bare, path
    error.args = (f"in layer {'/'.join((model,) + path)}: {bare}",)


LAYER_ERRORS = (GateError, NanOriginError)  # (with ValueError) get the layer path in front


def stateless(name: str, fn: Callable, output_shape: Callable = lambda s: s) -> Layer:
    """A layer without parameters: y = fn(x); `output_shape(input_shape)` gives y's shape."""

    def init(key, input_shape):
        return {}, {}, tuple(output_shape(tuple(input_shape)))

    def apply(params, state, x, *, key=None, train=False):
        return fn(x), state

    return Layer(name, init, apply)


def layer_scope(model: str):
    """jax.named_scope(model) for the outermost combinator, nothing inside another: each child
    then runs in jax.named_scope(its key), so a gate's scope reads as its layer path
    ('mlp/1_dense'), the path errors and NaN reports name."""
    if str(source_info_util.current_name_stack()):
        return contextlib.nullcontext()
    return jax.named_scope(model)


def split_key(key, n: int) -> list:
    """n keys from `key`, or n Nones when there is no key (deterministic apply)."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def check_keys(model: str, keys, tree, what: str) -> None:
    """`tree` (params or state of a combinator) must be a dict with exactly `keys`."""
    if not isinstance(tree, Mapping) or set(tree) != set(keys):
        have = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
        raise ValueError(f"{model}: {what} do not fit this model: expected keys "
                         f"{sorted(keys)}, got {have} (were they made by another model's init?)")


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
        params, state, shape = {}, {}, check_input_shape(name, input_shape)
        for k, layer, sub in zip(keys, layers, jax.random.split(key, len(layers))):
            try:
                params[k], state[k], shape = layer.init(sub, shape)
            except (ValueError, *LAYER_ERRORS) as e:
                in_layer(e, name, k)
                raise
        return params, state, shape

    def apply(params, state, x, *, key=None, train=False):
        check_keys(name, keys, params, "params")
        check_keys(name, keys, state, "state")
        new_state = {}
        with layer_scope(name):
            for k, layer, sub in zip(keys, layers, split_key(key, len(layers))):
                try:
                    with jax.named_scope(k):
                        x, new_state[k] = layer.apply(params[k], state[k], x, key=sub, train=train)
                except (ValueError, *LAYER_ERRORS) as e:
                    in_layer(e, name, k)
                    raise
        return x, new_state

    return Layer(name, init, apply, tuple(zip(keys, layers)), "serial")

