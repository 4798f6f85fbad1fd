"""The core layers: Dense, Conv2D, pooling, Flatten, Dropout (conventions:
fnn/nn/combinators.py).

Images are NHWC; conv kernels HWIO. Each apply is one or two fnn gates; the window, stride and
padding arithmetic is the gates' own (fnn.ops.conv), so a layer's output shape is the gate's.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fnn.nn.combinators import Layer, check_input_shape, stateless
from fnn.nn.initializers import get_initializer
from fnn.ops import affine, avg_pool2d, conv2d, dropout, max_pool2d, mean, reshape
from fnn.ops.conv import conv_padding, as_pair


def _features(v, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{what} must be a positive int (the number of outputs), got {v!r}")
    return v


def _image_shape(name: str, input_shape) -> tuple[int, int, int]:
    input_shape = check_input_shape(name, input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"{name} takes images (H, W, C) per example (NHWC batches), "
                         f"got input shape {tuple(input_shape)}")
    return tuple(input_shape)


def Dense(features: int, *, init="he", bias_init="zeros") -> Layer:
    """y = x @ w + b; x (N, D), or (N, d1, .., dk) flattened to (N, D).  w (D, features), b."""
    _features(features, "Dense features")
    w_init, b_init = get_initializer(init), get_initializer(bias_init)

    def init_fn(key, input_shape):
        d = math.prod(check_input_shape("Dense", input_shape))
        kw, kb = jax.random.split(key)
        return {"w": w_init(kw, (d, features)), "b": b_init(kb, (features,))}, {}, (features,)

    def apply(params, state, x, *, key=None, train=False):
        return affine(x, params["w"], params["b"]), state

    return Layer("dense", init_fn, apply)


def Conv2D(features: int, kernel_size=3, *, stride=1, padding: str = "SAME", init="he",
           bias_init="zeros") -> Layer:
    """2-D convolution of NHWC images with an HWIO kernel w (kh, kw, C, features), plus b."""
    _features(features, "Conv2D features")
    kh, kw = as_pair(kernel_size, "kernel_size", "conv2d")
    sh, sw = as_pair(stride, "stride", "conv2d")
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"Conv2D padding must be 'SAME' or 'VALID', got {padding!r}")
    w_init, b_init = get_initializer(init), get_initializer(bias_init)
    stride_arg = stride if isinstance(stride, int) else (sh, sw)

    def init_fn(key, input_shape):
        h, w, c = _image_shape("Conv2D", input_shape)
        pads = conv_padding(jax.ShapeDtypeStruct((1, h, w, c), jnp.float32),
                          jax.ShapeDtypeStruct((kh, kw, c, features), jnp.float32), (sh, sw),
                          padding)  # conv2d's own: "SAME" gives ceil(n / stride)
        out = ((h + sum(pads[0]) - kh) // sh + 1, (w + sum(pads[1]) - kw) // sw + 1, features)
        if out[0] < 1 or out[1] < 1:
            raise ValueError(f"Conv2D: a {kh}x{kw} kernel does not fit in {h}x{w} images "
                             f"with padding {padding}")
        k_w, k_b = jax.random.split(key)
        params = {"w": w_init(k_w, (kh, kw, c, features)), "b": b_init(k_b, (features,))}
        return params, {}, out

    def apply(params, state, x, *, key=None, train=False):
        y = conv2d(x, params["w"], stride=stride_arg, padding=padding)
        return y + params["b"], state

    return Layer("conv2d", init_fn, apply)


def _pool(name: str, gate, window, stride) -> Layer:
    wh, ww = as_pair(window, "window", gate.name)
    sh, sw = as_pair(window if stride is None else stride, "stride", gate.name)

    def output_shape(input_shape):
        h, w, c = _image_shape(name, input_shape)
        out = ((h - wh) // sh + 1, (w - ww) // sw + 1, c)
        if out[0] < 1 or out[1] < 1:
            raise ValueError(f"{name}: a {wh}x{ww} window does not fit in {h}x{w} images")
        return out

    def fn(x):
        return gate(x, window=window, stride=stride)

    return stateless(name.lower(), fn, output_shape)


def MaxPool2D(window=2, stride=None) -> Layer:
    """Max over window x window patches of NHWC images (stride defaults to the window)."""
    return _pool("MaxPool2D", max_pool2d, window, stride)


def AvgPool2D(window=2, stride=None) -> Layer:
    """Mean over window x window patches of NHWC images (stride defaults to the window)."""
    return _pool("AvgPool2D", avg_pool2d, window, stride)


def GlobalAvgPool2D() -> Layer:
    """Mean over the spatial axes: (N, H, W, C) -> (N, C)."""
    return stateless("global_avg_pool", lambda x: mean(x, axis=(1, 2)),
                     lambda s: (_image_shape("GlobalAvgPool2D", s)[2],))


def Flatten() -> Layer:
    """(N, d1, .., dk) -> (N, d1*..*dk)."""
    def fn(x):
        return reshape(x, shape=(x.shape[0], math.prod(x.shape[1:])))
    return stateless("flatten", fn, lambda s: (math.prod(s),))


def Dropout(rate: float) -> Layer:
    """Inverted dropout: in training, zero each unit with probability `rate` and scale the rest
    by 1/(1-rate); the identity in evaluation. Needs `key` in apply when train=True."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"Dropout rate must be in [0, 1), got {rate!r}")

    def init(key, input_shape):
        return {}, {}, tuple(input_shape)

    def apply(params, state, x, *, key=None, train=False):
        if not train or rate == 0.0:
            return x, state
        if key is None:
            raise ValueError("Dropout in training mode needs a PRNG key: "
                             "apply(params, state, x, key=key, train=True)")
        return dropout(x, key, rate=rate, train=True), state

    return Layer("dropout", init, apply)
