"""Residual connections: y = main(x) + shortcut(x), and the basic block of a ResNet."""

from __future__ import annotations

import jax

from fnn.nn.activations import Relu
from fnn.nn.layer import LAYER_ERRORS, Layer, in_layer, layer_scope, serial, split_key
from fnn.nn.layers import Conv2D
from fnn.nn.normalization import BatchNorm


def residual(main: Layer, shortcut: Layer | None = None, *, name: str = "residual") -> Layer:
    """main(x) + shortcut(x); the shortcut is the identity when None (shapes must then match).

    Params and state are {"main": .., "shortcut": ..}. The add gate distributes the upstream
    gradient to both branches, which is what lets gradients skip through deep stacks.
    """
    children = (("main", main),) + ((("shortcut", shortcut),) if shortcut is not None else ())

    def init(key, input_shape):
        params, state = {}, {}
        out = None
        for (k, layer), sub in zip(children, split_key(key, 2)):
            try:
                params[k], state[k], shape = layer.init(sub, tuple(input_shape))
            except (ValueError, *LAYER_ERRORS) as e:
                in_layer(e, name, k)
                raise
            if out is not None and shape != out:
                raise ValueError(f"{name}: main branch gives {out} but shortcut gives {shape}")
            out = shape
        if shortcut is None and out != tuple(input_shape):
            raise ValueError(f"{name}: main branch maps {tuple(input_shape)} to {out}; an identity "
                             "shortcut needs them equal (pass a projection shortcut)")
        return params, state, out

    def apply(params, state, x, *, key=None, train=False):
        new_state = {}
        outs = []
        with layer_scope(name):
            for (k, layer), sub in zip(children, split_key(key, 2)):
                try:
                    with jax.named_scope(k):
                        y, new_state[k] = layer.apply(params[k], state[k], x, key=sub,
                                                      train=train)
                except (ValueError, *LAYER_ERRORS) as e:
                    in_layer(e, name, k)
                    raise
                outs.append(y)
        return (outs[0] + outs[1] if len(outs) == 2 else outs[0] + x), new_state

    return Layer(name, init, apply, children, "parallel")


def ResidualBlock(channels: int, *, stride: int = 1, in_channels: int | None = None,
                  init="he") -> Layer:
    """The basic ResNet block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)), 3x3 convs.

    The shortcut is the identity, or a 1x1 strided conv + BatchNorm when the block changes the
    resolution (stride > 1) or the number of channels (in_channels != channels).
    """
    main = serial(Conv2D(channels, 3, stride=stride, init=init), BatchNorm(), Relu(),
                  Conv2D(channels, 3, init=init), BatchNorm(), name="main")
    project = stride != 1 or (in_channels is not None and in_channels != channels)
    shortcut = (serial(Conv2D(channels, 1, stride=stride, init=init), BatchNorm(),
                       name="projection") if project else None)
    return serial(residual(main, shortcut), Relu(), name="residual_block")
