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
        raise ValueError(
            f"{name} takes images (H, W, C) per example (NHWC batches), "
            f"got input shape {tuple(input_shape)}"
        )
    return tuple(input_shape)


def Dense(features: int, *, init="he", bias_init="zeros", flatten: bool = True) -> Layer:
    """y = x @ w + b; x (N, D), or (N, d1, .., dk) flattened to (N, D); w (D, features), b.

    Args:
        features: the number of outputs.
        init: the initializer of w, a name (fnn.nn.INITIALIZERS) or `init(key, shape, dtype)`.
        bias_init: the initializer of b, likewise.
        flatten: flatten each example to one vector first. flatten=False: the same map on the
            last axis of (N, ..., D) inputs, giving (N, ..., features): a per-token projection of
            (batch, time, width) sequences (PyTorch's Linear).

    Returns:
        The Layer ("dense"); params {"w", "b"}.

    Raises:
        ValueError: `features` is not a positive int; `init` or `bias_init` names no
            initializer; (from init) the input shape is not a tuple of positive ints.
    """
    _features(features, "Dense features")
    w_init, b_init = get_initializer(init), get_initializer(bias_init)

    def init_fn(key, input_shape):
        shape = check_input_shape("Dense", input_shape)
        d = shape[-1] if not flatten else math.prod(shape)
        kw, kb = jax.random.split(key)
        out = (*shape[:-1], features) if not flatten else (features,)
        return {"w": w_init(kw, (d, features)), "b": b_init(kb, (features,))}, {}, out

    def apply(params, state, x, *, key=None, train=False):
        if flatten or x.ndim == 2:
            return affine(x, params["w"], params["b"]), state
        lead = x.shape[:-1]
        y = affine(reshape(x, shape=(math.prod(lead), x.shape[-1])), params["w"], params["b"])
        return reshape(y, shape=(*lead, y.shape[-1])), state

    return Layer("dense", init_fn, apply)


def Conv2D(
    features: int, kernel_size=3, *, stride=1, padding: str = "SAME", init="he", bias_init="zeros"
) -> Layer:
    """2-D convolution of NHWC images with an HWIO kernel w (kh, kw, C, features), plus b.

    Args:
        features: the number of output channels.
        kernel_size: an int or a pair (kh, kw).
        stride: an int or a pair.
        padding: "SAME" or "VALID".
        init: the initializer of w, a name (fnn.nn.INITIALIZERS) or `init(key, shape, dtype)`.
        bias_init: the initializer of b, likewise.

    Returns:
        The Layer ("conv2d"); params {"w", "b"}.

    Raises:
        ValueError: `features` is not a positive int, `padding` is neither "SAME" nor "VALID", an
            initializer is unknown; (from init) the input shape is not (H, W, C), or the kernel
            does not fit in the images.
        GateError: `kernel_size` or `stride` is not a positive int or a pair of them.
    """
    _features(features, "Conv2D features")
    kh, kw = as_pair(kernel_size, "kernel_size", "conv2d")
    sh, sw = as_pair(stride, "stride", "conv2d")
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"Conv2D padding must be 'SAME' or 'VALID', got {padding!r}")
    w_init, b_init = get_initializer(init), get_initializer(bias_init)
    stride_arg = stride if isinstance(stride, int) else (sh, sw)

    def init_fn(key, input_shape):
        h, w, c = _image_shape("Conv2D", input_shape)
        pads = conv_padding(
            jax.ShapeDtypeStruct((1, h, w, c), jnp.float32),
            jax.ShapeDtypeStruct((kh, kw, c, features), jnp.float32),
            (sh, sw),
            padding,
        )  # conv2d's own: "SAME" gives ceil(n / stride)
        out = ((h + sum(pads[0]) - kh) // sh + 1, (w + sum(pads[1]) - kw) // sw + 1, features)
        if out[0] < 1 or out[1] < 1:
            raise ValueError(
                f"Conv2D: a {kh}x{kw} kernel does not fit in {h}x{w} images with padding {padding}"
            )
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
    """Max over window x window patches of NHWC images.

    Args:
        window: an int or a pair.
        stride: an int or a pair (default: the window).

    Returns:
        The Layer ("maxpool2d").

    Raises:
        GateError: `window` or `stride` is not a positive int or a pair of them.
        ValueError: (from init) the input shape is not (H, W, C), or the window does not fit in
            the images.
    """
    return _pool("MaxPool2D", max_pool2d, window, stride)


def AvgPool2D(window=2, stride=None) -> Layer:
    """Mean over window x window patches of NHWC images.

    Args:
        window: an int or a pair.
        stride: an int or a pair (default: the window).

    Returns:
        The Layer ("avgpool2d").

    Raises:
        GateError: `window` or `stride` is not a positive int or a pair of them.
        ValueError: (from init) the input shape is not (H, W, C), or the window does not fit in
            the images.
    """
    return _pool("AvgPool2D", avg_pool2d, window, stride)


def GlobalAvgPool2D() -> Layer:
    """Mean over the spatial axes: (N, H, W, C) -> (N, C).

    Returns:
        The Layer ("global_avg_pool").

    Raises:
        ValueError: (from init) the input shape is not (H, W, C).
    """
    return stateless(
        "global_avg_pool",
        lambda x: mean(x, axis=(1, 2)),
        lambda s: (_image_shape("GlobalAvgPool2D", s)[2],),
    )


def Flatten() -> Layer:
    """(N, d1, .., dk) -> (N, d1*..*dk).

    Returns:
        The Layer ("flatten").
    """

    def fn(x):
        return reshape(x, shape=(x.shape[0], math.prod(x.shape[1:])))

    return stateless("flatten", fn, lambda s: (math.prod(s),))


def Dropout(rate: float) -> Layer:
    """Inverted dropout: zero each unit with probability `rate` in training, scale the rest.

    In training the kept units are scaled by 1/(1-rate); in evaluation it is the identity. Needs
    `key` in apply when train=True.

    Args:
        rate: the probability of zeroing a unit, in [0, 1).

    Returns:
        The Layer ("dropout").

    Raises:
        ValueError: `rate` is outside [0, 1); (from apply) train=True without a key.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"Dropout rate must be in [0, 1), got {rate!r}")

    def init(key, input_shape):
        return {}, {}, tuple(input_shape)

    def apply(params, state, x, *, key=None, train=False):
        if not train or rate == 0.0:
            return x, state
        if key is None:
            raise ValueError(
                "Dropout in training mode needs a PRNG key: "
                "apply(params, state, x, key=key, train=True)"
            )
        return dropout(x, key, rate=rate, train=True), state

    return Layer("dropout", init, apply)


# ---- general convolutions: any number of spatial axes, dilation, groups, transposed ---------------
_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


def _tuple(v, n: int, what: str, layer: str, minimum: int = 1) -> tuple:
    t = (v,) * n if isinstance(v, int) and not isinstance(v, bool) else tuple(v)
    if len(t) != n or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= minimum for i in t
    ):
        raise ValueError(f"{layer}: {what} must be an int >= {minimum} or {n} of them, got {v!r}")
    return t


def _padding(padding, n: int, layer: str):
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(
                f"{layer}: padding must be 'SAME', 'VALID', an int or (lo, hi) per "
                f"axis, got {padding!r}"
            )
        return padding.upper()
    if isinstance(padding, int) and not isinstance(padding, bool):
        return ((padding, padding),) * n
    try:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    except (TypeError, ValueError):
        raise ValueError(
            f"{layer}: padding must be 'SAME', 'VALID', an int or (lo, hi) per "
            f"axis, got {padding!r}"
        ) from None
    if len(pads) != n:
        raise ValueError(f"{layer}: padding needs {n} (lo, hi) pairs, got {padding!r}")
    return pads


def _spatial_shape(layer: str, input_shape, n: int) -> tuple:
    shape = check_input_shape(layer, input_shape)
    if len(shape) != n + 1:
        raise ValueError(
            f"{layer} takes inputs ({', '.join(_SPATIAL[n])}, C) per example "
            f"(channels last), got input shape {tuple(shape)}"
        )
    return shape


def _output_shape(layer: str, fn, input_shape, *params) -> tuple:
    """The shape of fn(x of one example, *params), by abstract evaluation (no computation)."""
    x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
    specs = [jax.ShapeDtypeStruct(p, jnp.float32) for p in params]
    out = jax.eval_shape(fn, x, *specs).shape[1:]
    if any(d < 1 for d in out):
        raise ValueError(
            f"{layer}: the output would be empty for inputs {tuple(input_shape)}; "
            "use a smaller kernel, stride or dilation, or more padding"
        )
    return out


def _conv_options(layer: str, ndim, features, kernel_size, stride, dilation, padding, groups):
    """Conv's options checked (ValueError naming `layer`): (kernel size, strides, dilations) as
    `ndim` ints each, and the padding as lax takes it."""
    if ndim not in _SPATIAL:
        raise ValueError(f"Conv: ndim must be 1, 2 or 3, got {ndim!r}")
    _features(features, f"{layer} features")
    checked = (
        _tuple(kernel_size, ndim, "kernel_size", layer),
        _tuple(stride, ndim, "stride", layer),
        _tuple(dilation, ndim, "dilation", layer),
        _padding(padding, ndim, layer),
    )
    if not isinstance(groups, int) or groups < 1 or features % groups:
        raise ValueError(
            f"{layer}: groups must be a positive int dividing features {features}, got {groups!r}"
        )
    return checked


def _channels_last_conv(ndim: int, strides, pad, dilations, groups: int):
    """conv(x, w): the convolution of channels-last inputs (NWC, NHWC, NDHWC for `ndim` 1, 2,
    3) with a kernel (k..., C / groups, features), by jax.lax.conv_general_dilated."""
    spec = _SPATIAL[ndim]
    dims = (f"N{spec}C", f"{spec}IO", f"N{spec}C")

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x,
            w,
            strides,
            pad,
            rhs_dilation=dilations,
            dimension_numbers=dims,
            feature_group_count=groups,
        )

    return conv


def _kernel_shape(layer: str, c: int, ks: tuple, groups: int, features: int) -> tuple:
    """The kernel's shape (k..., c / groups, features) for inputs of `c` channels; ValueError
    naming `layer` when `groups` does not divide them."""
    if c % groups:
        raise ValueError(f"{layer}: groups {groups} must divide the input channels {c}")
    return ks + (c // groups, features)


def _kernel_and_bias(key, w_init, w_shape: tuple, b_init, features: int) -> dict:
    """The params {"w", "b"}: a kernel of `w_shape` by `w_init` and a bias of `features` by
    `b_init`, each from its half of `key`."""
    k_w, k_b = jax.random.split(key)
    return {"w": w_init(k_w, w_shape), "b": b_init(k_b, (features,))}


def Conv(
    features: int,
    kernel_size=3,
    *,
    ndim: int = 2,
    stride=1,
    padding="SAME",
    dilation=1,
    groups: int = 1,
    init="he",
    bias_init="zeros",
    name: str | None = None,
) -> Layer:
    """N-d convolution with dilation (atrous) and groups, plus a bias.

    ndim 1, 2 or 3 spatial axes, channels last: NWC, NHWC, NDHWC; depthwise when groups == input
    channels. Kernel (k..., C / groups, features). Written with jax.lax.conv_general_dilated, so
    fnn.grad differentiates it with the hand-written rule of that primitive (and jax.grad with
    JAX's). A 2-D convolution without dilation or groups is the conv2d gate (Conv2D).

    Args:
        features: the number of output channels.
        kernel_size: an int or `ndim` of them.
        ndim: the number of spatial axes, 1, 2 or 3.
        stride: an int or `ndim` of them.
        padding: "SAME", "VALID", an int or a (lo, hi) pair per spatial axis.
        dilation: the kernel's dilation, an int or `ndim` of them.
        groups: the number of groups (it must divide `features` and the input channels).
        init: the initializer of the kernel, a name (fnn.nn.INITIALIZERS) or
            `init(key, shape, dtype)`.
        bias_init: the initializer of the bias, likewise.
        name: the name in error messages (default f"Conv{ndim}D"); the layer's name is its lower
            case.

    Returns:
        The Layer; params {"w", "b"}.

    Raises:
        ValueError: `ndim` is not 1, 2 or 3; `features`, `kernel_size`, `stride`, `dilation`,
            `padding` or `groups` is not valid; an initializer is unknown; (from init) the input
            shape has another rank, `groups` does not divide its channels, or the output would be
            empty.
    """
    layer = name or f"Conv{ndim}D"
    ks, strides, dilations, pad = _conv_options(
        layer, ndim, features, kernel_size, stride, dilation, padding, groups
    )
    conv = _channels_last_conv(ndim, strides, pad, dilations, groups)
    w_init, b_init = get_initializer(init), get_initializer(bias_init)

    def init_fn(key, input_shape):
        shape = _spatial_shape(layer, input_shape, ndim)
        w_shape = _kernel_shape(layer, shape[-1], ks, groups, features)
        out = _output_shape(layer, conv, shape, w_shape)
        return _kernel_and_bias(key, w_init, w_shape, b_init, features), {}, out

    def apply(params, state, x, *, key=None, train=False):
        return conv(x, params["w"]) + params["b"], state

    return Layer(layer.lower(), init_fn, apply)


def Conv1D(features: int, kernel_size=3, **kwargs) -> Layer:
    """1-D convolution of (N, L, C) sequences: `Conv(features, kernel_size, ndim=1, ...)`.

    Args:
        features: the number of output channels.
        kernel_size: an int or a 1-tuple.
        **kwargs: Conv's keyword options (stride, padding, dilation, groups, init, bias_init,
            name).

    Returns:
        The Layer ("conv1d").

    Raises:
        ValueError: as for Conv.
    """
    return Conv(features, kernel_size, ndim=1, **kwargs)


def Conv3D(features: int, kernel_size=3, **kwargs) -> Layer:
    """3-D convolution of (N, D, H, W, C) volumes: `Conv(features, kernel_size, ndim=3, ...)`.

    Args:
        features: the number of output channels.
        kernel_size: an int or three of them.
        **kwargs: Conv's keyword options (stride, padding, dilation, groups, init, bias_init,
            name).

    Returns:
        The Layer ("conv3d").

    Raises:
        ValueError: as for Conv.
    """
    return Conv(features, kernel_size, ndim=3, **kwargs)


def DepthwiseConv2D(kernel_size=3, *, multiplier: int = 1, **kwargs) -> Layer:
    """Each input channel convolved on its own with `multiplier` kernels (groups = channels).

    (N, H, W, C) -> (N, H', W', C * multiplier). The convolution (Conv) is built when the input's
    channels are known, so its errors come from init.

    Args:
        kernel_size: an int or a pair.
        multiplier: the kernels per input channel.
        **kwargs: Conv's keyword options (stride, padding, dilation, init, bias_init).

    Returns:
        The Layer ("depthwise_conv2d").

    Raises:
        ValueError: (from init) as for Conv.
    """

    def init(key, input_shape):
        c = _spatial_shape("DepthwiseConv2D", input_shape, 2)[-1]
        inner = Conv(
            c * multiplier, kernel_size, ndim=2, groups=c, name="DepthwiseConv2D", **kwargs
        )
        return inner.init(key, input_shape)

    def apply(params, state, x, *, key=None, train=False):
        c = x.shape[-1]
        inner = Conv(
            c * multiplier, kernel_size, ndim=2, groups=c, name="DepthwiseConv2D", **kwargs
        )
        return inner.apply(params, state, x)

    return Layer("depthwise_conv2d", init, apply)


def SeparableConv2D(features: int, kernel_size=3, *, multiplier: int = 1, **kwargs) -> Layer:
    """A depthwise convolution followed by a 1x1 (pointwise) one to `features` channels.

    As in MobileNet and Xception; params {"0_depthwise_conv2d": .., "1_pointwise": ..}.

    Args:
        features: the output channels of the pointwise convolution.
        kernel_size: the depthwise kernel, an int or a pair.
        multiplier: the depthwise kernels per input channel.
        **kwargs: the depthwise convolution's keyword options (Conv's); its init and bias_init
            also go to the pointwise one.

    Returns:
        The Layer (a serial, "separable_conv2d").

    Raises:
        ValueError: as for Conv (the depthwise part's from init).
    """
    from fnn.nn.combinators import serial

    pointwise = {k: v for k, v in kwargs.items() if k in ("init", "bias_init")}
    return serial(
        DepthwiseConv2D(kernel_size, multiplier=multiplier, **kwargs),
        Conv(features, 1, ndim=2, name="Pointwise", **pointwise),
        name="separable_conv2d",
    )


def ConvTranspose2D(
    features: int, kernel_size=3, *, stride=1, padding="SAME", init="he", bias_init="zeros"
) -> Layer:
    """Transposed 2-D convolution (up-sampling by `stride`): jax.lax.conv_transpose.

    NHWC with an HWIO kernel (kh, kw, C, features), plus a bias.

    Args:
        features: the number of output channels.
        kernel_size: an int or a pair.
        stride: an int or a pair (the up-sampling factor).
        padding: "SAME", "VALID", an int or a (lo, hi) pair per spatial axis.
        init: the initializer of the kernel, a name (fnn.nn.INITIALIZERS) or
            `init(key, shape, dtype)`.
        bias_init: the initializer of the bias, likewise.

    Returns:
        The Layer ("conv_transpose2d"); params {"w", "b"}.

    Raises:
        ValueError: `features`, `kernel_size`, `stride` or `padding` is not valid, an initializer
            is unknown; (from init) the input shape is not (H, W, C), or the output would be
            empty.
    """
    ks = _tuple(kernel_size, 2, "kernel_size", "ConvTranspose2D")
    strides = _tuple(stride, 2, "stride", "ConvTranspose2D")
    pad = _padding(padding, 2, "ConvTranspose2D")
    _features(features, "ConvTranspose2D features")
    w_init, b_init = get_initializer(init), get_initializer(bias_init)

    def conv(x, w):
        return jax.lax.conv_transpose(
            x, w, strides, pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def init_fn(key, input_shape):
        shape = _spatial_shape("ConvTranspose2D", input_shape, 2)
        w_shape = ks + (shape[-1], features)
        out = _output_shape("ConvTranspose2D", conv, shape, w_shape)
        k_w, k_b = jax.random.split(key)
        return {"w": w_init(k_w, w_shape), "b": b_init(k_b, (features,))}, {}, out

    def apply(params, state, x, *, key=None, train=False):
        return conv(x, params["w"]) + params["b"], state

    return Layer("conv_transpose2d", init_fn, apply)


# ---- general pooling: padding, dilation, ceil mode, counting the padding ------------------------------
def _pool_pads(spatial, win, strides, dil, pad, ceil_mode: bool):
    """(base, extra) per spatial axis: base the (lo, hi) padding asked for (that of 'SAME' or
    'VALID' worked out), extra the further high padding of ceil mode's last, partial window."""
    if isinstance(pad, str):
        full = jax.lax.padtype_to_pads(
            spatial, [(k - 1) * d + 1 for k, d in zip(win, dil)], strides, pad
        )
        base = [tuple(p) for p in full]
    else:
        base = list(pad)
    extra = []
    for n, k, s, d, (lo, hi) in zip(spatial, win, strides, dil, base):
        span = (k - 1) * d + 1
        total = n + lo + hi
        out = -(-(total - span) // s) + 1 if ceil_mode else (total - span) // s + 1
        # PyTorch: the last window must start inside the input or the left padding
        if ceil_mode and (out - 1) * s >= n + lo:
            out -= 1
        extra.append(max(0, (out - 1) * s + span - total))
    return base, extra


def _reduce_window(x, kind: str, win, strides, dil, base, extra, count_include_pad: bool):
    """`x` (N, *spatial, C) max- or average-pooled, padded by `base` plus `extra` (_pool_pads)."""
    spatial = x.shape[1 : 1 + len(win)]
    config = [(0, 0)] + [(lo, hi + e) for (lo, hi), e in zip(base, extra)] + [(0, 0)]
    dims, strd, wdil = (1,) + win + (1,), (1,) + strides + (1,), (1,) + dil + (1,)
    if kind == "max":
        return jax.lax.reduce_window(
            x, -jnp.inf, jax.lax.max, dims, strd, config, window_dilation=wdil
        )
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strd, config, window_dilation=wdil)
    ones = jnp.ones((1,) + tuple(spatial) + (1,), x.dtype)
    if count_include_pad:  # the explicit padding counts, ceil mode's extra does not
        ones = jnp.pad(ones, [(0, 0)] + list(base) + [(0, 0)], constant_values=1)
        config = [(0, 0)] + [(0, e) for e in extra] + [(0, 0)]
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, dims, strd, config, window_dilation=wdil)
    return total / count


def Pool(
    kind: str,
    window=2,
    *,
    ndim: int = 2,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> Layer:
    """Max or average pooling over `ndim` spatial axes (channels last).

    As PyTorch's MaxPool/AvgPool. Written with jax.lax.reduce_window (fnn's rules for
    reduce_window_max / reduce_window_sum differentiate it).

    Args:
        kind: "max" or "avg".
        window: an int or `ndim` of them.
        ndim: the number of spatial axes.
        stride: an int or `ndim` of them (default: the window).
        padding: explicit padding, an int or (lo, hi) per axis, or 'SAME'/'VALID'.
        dilation: the dilation of the window.
        ceil_mode: a last, partial window where the input does not divide evenly.
        count_include_pad: for the average, whether padded zeros count in the divisor (the extra
            padding of ceil_mode never does).

    Returns:
        The Layer (e.g. "maxpool2d").

    Raises:
        ValueError: `kind` is neither "max" nor "avg", or `window`, `stride`, `dilation` or
            `padding` is not valid; (from init) the input shape has another rank, or the output
            would be empty.
    """
    if kind not in ("max", "avg"):
        raise ValueError(f"Pool: kind must be 'max' or 'avg', got {kind!r}")
    layer = f"{'Max' if kind == 'max' else 'Avg'}Pool{ndim}D"
    win = _tuple(window, ndim, "window", layer)
    strides = _tuple(window if stride is None else stride, ndim, "stride", layer)
    dil = _tuple(dilation, ndim, "dilation", layer)
    pad = _padding(padding, ndim, layer)

    def pool(x):
        base, extra = _pool_pads(x.shape[1 : 1 + ndim], win, strides, dil, pad, ceil_mode)
        return _reduce_window(x, kind, win, strides, dil, base, extra, count_include_pad)

    def init(key, input_shape):
        shape = _spatial_shape(layer, input_shape, ndim)
        return {}, {}, _output_shape(layer, pool, shape)

    def apply(params, state, x, *, key=None, train=False):
        return pool(x), state

    return Layer(layer.lower(), init, apply)
