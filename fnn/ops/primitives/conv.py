"""Gates of JAX's convolution and windowed reductions: conv_general_dilated (any layout,
strides, padding, lhs/rhs dilation, feature and batch groups) and reduce_window_sum / max / min
(pooling, as lax.reduce_window, flax and equinox write it).

The convolution's backward is two convolutions (after JAX's transpose rules): dx convolves g
with the spatially flipped kernel, in- and out-features swapped, strides turned into input
dilation; dw correlates the input with g. A window sum sends g to every element of its window;
a window max routes it to the window's maximum (the first one, in window order, on a tie).
The convolution and the window sum take complex values as JAX does; a window max or min of
complex values JAX cannot differentiate (its rule compares them with ge/le), nor can fnn.
"""

from typing import NamedTuple

import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from fnn.autodiff.case_values import cnormal, distinct, normal
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.primitive_cases import case


def _dilate(shape, dilation):
    return tuple(0 if d == 0 else 1 + r * (d - 1) for d, r in zip(shape, dilation))


def _lhs_padding(in_shape, window, strides, out_shape, padding, lhs_dilation, rhs_dilation):
    """The padding of the transposed convolution that gives the input's gradient."""
    lhs_d = _dilate(in_shape, lhs_dilation)
    rhs_d = _dilate(window, rhs_dilation)
    out_d = _dilate(out_shape, strides)
    before = np.subtract(rhs_d, [lo for lo, _ in padding]) - 1
    after = np.add(lhs_d, rhs_d) - 1 - np.asarray(out_d) - before
    return [(int(a), int(b)) for a, b in zip(before, after)]


def _rhs_padding(in_shape, window, strides, out_shape, padding, lhs_dilation, rhs_dilation):
    """The padding of the correlation of input and g that gives the kernel's gradient."""
    if len(in_shape) == 0:
        return []
    lhs_d = _dilate(in_shape, lhs_dilation)
    rhs_d = _dilate(window, rhs_dilation)
    out_d = _dilate(out_shape, strides)
    lo = [lo for lo, _ in padding]
    hi = [o - l_ + r - p - 1 for o, l_, r, p in zip(out_d, lhs_d, rhs_d, lo)]
    return list(zip(lo, hi))


def _axis_out_of(src, size1, x):
    shape = list(x.shape)
    shape[src : src + 1] = [size1, shape[src] // size1]
    return lax.reshape(x, shape)


def _axis_into(src, dst, x):
    perm = [i for i in range(x.ndim) if i != src]
    perm.insert(dst, src)
    shape = list(np.delete(x.shape, src))
    shape[dst] *= x.shape[src]
    return lax.reshape(lax.transpose(x, perm), shape)


def _transpose_spec(spec):
    return (spec[1], spec[0]) + tuple(spec[2:])


class _Conv(NamedTuple):
    """A convolution's parameters, as conv_general_dilated binds them."""

    window_strides: tuple
    padding: tuple
    lhs_dilation: tuple
    rhs_dilation: tuple
    dimension_numbers: lax.ConvDimensionNumbers
    feature_group_count: int
    batch_group_count: int
    precision: object = None
    preferred_element_type: object = None


def _spatial(spec):
    return list(spec[2:])


def _conv_dx(g, x_shape, x_dtype, w, c: _Conv):
    """dx: g convolved with the flipped kernel, features swapped, strides as input dilation."""
    lhs_spec, rhs_spec, out_spec = c.dimension_numbers
    w_shape, groups = w.shape, c.feature_group_count
    if c.feature_group_count > 1 or c.batch_group_count > 1:
        groups = max(c.feature_group_count, c.batch_group_count)
        w = _axis_into(rhs_spec[0], rhs_spec[1], _axis_out_of(rhs_spec[0], groups, w))
    dims = lax.ConvDimensionNumbers(out_spec, _transpose_spec(rhs_spec), lhs_spec)
    pads = _lhs_padding(
        np.take(x_shape, _spatial(lhs_spec)),
        np.take(w_shape, _spatial(rhs_spec)),
        c.window_strides,
        np.take(g.shape, _spatial(out_spec)),
        c.padding,
        c.lhs_dilation,
        c.rhs_dilation,
    )
    w = lax.rev(w, _spatial(rhs_spec)).astype(g.dtype)
    dx = lax.conv_general_dilated(
        g,
        w,
        window_strides=c.lhs_dilation,
        padding=pads,
        lhs_dilation=c.window_strides,
        rhs_dilation=c.rhs_dilation,
        dimension_numbers=dims,
        feature_group_count=groups,
        batch_group_count=1,
        precision=c.precision,
        preferred_element_type=c.preferred_element_type,
    )
    if c.batch_group_count > 1:
        dx = _axis_out_of(lhs_spec[1], c.batch_group_count, dx)
        dx = _axis_into(lhs_spec[1], lhs_spec[0], dx)
    return dx.astype(x_dtype)


def _conv_dw(g, x, w_shape, w_dtype, c: _Conv):
    """dw: the input correlated with g (feature groups become batch groups and back)."""
    lhs_spec, rhs_spec, out_spec = c.dimension_numbers
    if np.size(g) == 0:
        return lax.full(w_shape, 0, w_dtype)
    if c.batch_group_count > 1:
        feature_groups, batch_groups = c.batch_group_count, 1
    else:  # feature groups become batch groups (1 and 1 where there are none)
        feature_groups, batch_groups = 1, c.feature_group_count
    dims = lax.ConvDimensionNumbers(
        _transpose_spec(lhs_spec), _transpose_spec(out_spec), _transpose_spec(rhs_spec)
    )
    pads = _rhs_padding(
        np.take(x.shape, _spatial(lhs_spec)),
        np.take(w_shape, _spatial(rhs_spec)),
        c.window_strides,
        np.take(g.shape, _spatial(out_spec)),
        c.padding,
        c.lhs_dilation,
        c.rhs_dilation,
    )
    dw = lax.conv_general_dilated(
        x.astype(g.dtype),
        g,
        window_strides=c.rhs_dilation,
        padding=pads,
        lhs_dilation=c.lhs_dilation,
        rhs_dilation=c.window_strides,
        dimension_numbers=dims,
        feature_group_count=feature_groups,
        batch_group_count=batch_groups,
        precision=c.precision,
        preferred_element_type=c.preferred_element_type,
    )
    return dw.astype(w_dtype)


@primitive_gate(
    P.conv_general_dilated_p,
    params=_Conv._fields,
    only={"out_sharding": (None,)},
    complex=True,
)
def conv_general_dilated(g, inputs, *, needs, **params):
    """the convolution of x with kernel w.  Local gradients: dx = g convolved with w flipped
    (features swapped, strides as input dilation); dw = x correlated with g."""
    x, w = inputs
    c = _Conv(**{name: params[name] for name in _Conv._fields if name in params})
    return (
        _conv_dx(g, x.shape, x.dtype, w, c) if needs[0] else None,
        _conv_dw(g, x, w.shape, w.dtype, c) if needs[1] else None,
    )


def _conv(**params):
    """fn(x, w) binding conv_general_dilated with `params`, for `case`."""
    return lambda x, w: lax.conv_general_dilated(x, w, **params)


_NHWC = ("NHWC", "HWIO", "NHWC")


@conv_general_dilated.defcases
def _conv_cases(rng, dtype):
    n = lambda *s: normal(rng, s, dtype)
    c = lambda *s: cnormal(rng, s, dtype)
    return [
        *_conv_2d_cases(n),
        *_conv_1d_3d_cases(n),
        case(
            P.conv_general_dilated_p,
            _conv(window_strides=(2, 1), padding=((1, 0), (2, 1)), feature_group_count=2),
            c(2, 4, 5, 4),
            c(4, 2, 3, 2),
            label="complex, strided, 2 groups",
        ),
    ]


def _conv_2d_cases(n):
    """Real 2-d convolutions, inputs drawn by `n(*shape)`: NHWC and NCHW layouts, SAME and
    explicit padding, strides, lhs and rhs dilation, feature groups (depthwise)."""
    return [
        case(
            P.conv_general_dilated_p,
            _conv(window_strides=(1, 1), padding="SAME", dimension_numbers=_NHWC),
            n(2, 5, 5, 3),
            n(3, 3, 3, 4),
            label="NHWC SAME",
        ),
        case(
            P.conv_general_dilated_p,
            _conv(window_strides=(2, 1), padding=((1, 0), (2, 1))),
            n(2, 3, 7, 6),
            n(4, 3, 3, 2),
            label="NCHW strided, explicit padding",
        ),
        case(
            P.conv_general_dilated_p,
            _conv(
                window_strides=(1, 1),
                padding=((0, 1), (1, 0)),
                lhs_dilation=(2, 1),
                rhs_dilation=(1, 2),
            ),
            n(1, 2, 4, 6),
            n(3, 2, 2, 2),
            label="lhs and rhs dilation",
        ),
        case(
            P.conv_general_dilated_p,
            _conv(
                window_strides=(1, 1),
                padding="SAME",
                dimension_numbers=_NHWC,
                feature_group_count=3,
            ),
            n(2, 4, 4, 3),
            n(3, 3, 1, 6),
            label="depthwise (3 groups)",
        ),
    ]


def _conv_1d_3d_cases(n):
    """Real convolutions of one and three spatial axes, inputs drawn by `n(*shape)`: batch
    groups in 1-d, a strided 3-d convolution."""
    return [
        case(
            P.conv_general_dilated_p,
            _conv(window_strides=(1,), padding="VALID", batch_group_count=2),
            n(4, 2, 5),
            n(4, 2, 2),
            label="batch groups, 1-d",
        ),
        case(
            P.conv_general_dilated_p,
            _conv(
                window_strides=(1, 1, 2),
                padding="SAME",
                dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
            ),
            n(1, 3, 3, 4, 2),
            n(2, 2, 2, 2, 3),
            label="3-d",
        ),
    ]


conv_general_dilated.defkinks(smooth=True)


# ---- windowed reductions ---------------------------------------------------------------------
_WINDOW_PARAMS = (
    "window_dimensions",
    "window_strides",
    "padding",
    "base_dilation",
    "window_dilation",
)


def _unpad(g, padding_config):
    """The transpose of lax.pad: the positions of the unpadded operand read out of g."""
    lo, hi, interior = zip(*padding_config)
    unpadded = lax.pad(g, np.zeros((), g.dtype), tuple((-a, -b, 0) for a, b in zip(lo, hi)))
    return lax.slice(unpadded, (0,) * len(lo), unpadded.shape, tuple(i + 1 for i in interior))


@primitive_gate(P.reduce_window_sum_p, save="shapes", params=_WINDOW_PARAMS, complex=True)
def reduce_window_sum(
    g,
    shapes,
    *,
    window_dimensions,
    window_strides,
    padding,
    base_dilation,
    window_dilation,
    **params,
):
    """sums over sliding windows (sum/average pooling).  Local gradient: 1 for every element
    of a window, so each element collects g of every window it is in."""
    (x,) = shapes
    pads = _lhs_padding(
        x.shape, window_dimensions, window_strides, g.shape, padding, base_dilation, window_dilation
    )
    padded = lax.pad(
        g, np.zeros((), g.dtype), [(lo, hi, s - 1) for (lo, hi), s in zip(pads, window_strides)]
    )
    out = P.reduce_window_sum_p.bind(
        padded,
        window_dimensions=tuple(window_dimensions),
        window_strides=tuple(base_dilation),
        padding=((0, 0),) * len(x.shape),
        base_dilation=(1,) * len(x.shape),
        window_dilation=tuple(window_dilation),
    )
    return (out,)


def _window_cases(primitive, init, op, make=normal, dilated_reference=True, complex_make=None):
    """Pooling cases; JAX has no VJP of a window max/min with dilation (dilated_reference);
    with complex_make (a rule that takes complex values) one complex case more."""

    def cases(rng, dtype):
        rw = lambda **kw: lambda x: lax.reduce_window(x, np.asarray(init, x.dtype), op, **kw)
        more = (
            []
            if complex_make is None
            else [
                case(
                    primitive,
                    rw(window_dimensions=(2, 2), window_strides=(1, 2), padding=((1, 0), (0, 1))),
                    complex_make(rng, (4, 5), dtype),
                    label="complex, strided, padded",
                )
            ]
        )
        return [
            case(
                primitive,
                rw(window_dimensions=(1, 2, 2, 1), window_strides=(1, 2, 2, 1), padding="VALID"),
                make(rng, (2, 4, 4, 3), dtype),
                label="2x2 pool",
            ),
            case(
                primitive,
                rw(window_dimensions=(1, 3, 3, 1), window_strides=(1, 2, 2, 1), padding="SAME"),
                make(rng, (1, 5, 5, 2), dtype),
                label="3x3 stride 2 SAME",
            ),
            case(
                primitive,
                rw(
                    window_dimensions=(3,),
                    window_strides=(1,),
                    padding=((1, 2),),
                    window_dilation=(2,),
                ),
                make(rng, (7,), dtype),
                label="1-d, window dilation, padding",
                reference=dilated_reference,
            ),
            case(
                primitive,
                rw(
                    window_dimensions=(2, 2),
                    window_strides=(1, 1),
                    padding="VALID",
                    base_dilation=(2, 1),
                ),
                make(rng, (3, 3), dtype),
                label="base dilation",
                reference=dilated_reference,
            ),
        ] + more

    return cases


def _window_kinks(primitive, init, op):
    """Ties within and across windows (overlapping and not), a NaN, infinities."""

    def kinks(dtype):
        x = np.array(
            [
                [1.0, 1.0, 0.0, 1.0],
                [0.0, 0.0, 0.0, 0.0],
                [2.0, 1.0, 2.0, 2.0],
                [np.nan, 1.0, np.inf, -np.inf],
            ],
            dtype,
        )[None, :, :, None]
        rw = lambda **kw: lambda x: lax.reduce_window(x, np.asarray(init, dtype), op, **kw)
        return [
            case(
                primitive,
                rw(window_dimensions=(1, 2, 2, 1), window_strides=(1, 2, 2, 1), padding="VALID"),
                x,
                label="2x2 windows, ties",
            ),
            case(
                primitive,
                rw(window_dimensions=(1, 2, 2, 1), window_strides=(1, 1, 1, 1), padding="SAME"),
                x,
                label="overlapping windows, ties",
            ),
        ]

    return kinks


reduce_window_sum.defcases(_window_cases(P.reduce_window_sum_p, 0.0, lax.add, complex_make=cnormal))
reduce_window_sum.defkinks(smooth=True)


def _window_chooser(
    g,
    saved,
    window_dimensions,
    window_strides,
    padding,
    base_dilation,
    window_dilation,
    fill,
    keeps,
):
    """g of each window routed to the element XLA's select-and-scatter selects, as JAX's rule
    does: the window's elements (padding left out) are read in window order, and the selected
    one is replaced by the next unless keeps(selected, next) (>= for max, <= for min). So a tie
    goes to the first maximum, and a NaN is passed over by the next element. One strided slice
    of the padded input per window position, twice (select, then route)."""
    (x,), y = saved
    if any(n == 0 for n in y.shape):
        return (lax.full(x.shape, 0, g.dtype),)
    config = [(lo, hi, d - 1) for (lo, hi), d in zip(padding, base_dilation)]
    xp = lax.pad(x, np.asarray(fill, x.dtype), config)
    inside = lax.pad(lax.full(x.shape, True, np.bool_), np.asarray(False), config)
    windows = []
    for offset in np.ndindex(*window_dimensions):
        start = [k * d for k, d in zip(offset, window_dilation)]
        limit = [s + (n - 1) * st + 1 for s, n, st in zip(start, y.shape, window_strides)]
        windows.append((start, limit))
    chosen = lax.full(y.shape, -1, np.int32)  # the selected window position (-1: none yet)
    best = None
    for k, (start, limit) in enumerate(windows):
        value = lax.slice(xp, start, limit, window_strides)
        valid = lax.slice(inside, start, limit, window_strides)
        first = lax.eq(chosen, np.int32(-1))
        take = (
            valid
            if best is None
            else lax.bitwise_and(valid, lax.bitwise_or(first, lax.bitwise_not(keeps(best, value))))
        )
        best = value if best is None else lax.select(take, value, best)
        chosen = lax.select(take, lax.full_like(chosen, k), chosen)
    grad_xp = lax.full(xp.shape, 0, g.dtype)
    for k, (start, limit) in enumerate(windows):
        routed = lax.select(lax.eq(chosen, np.int32(k)), g, lax.full_like(g, 0))
        back = [
            (s, n - lim, st - 1) for s, lim, st, n in zip(start, limit, window_strides, xp.shape)
        ]
        grad_xp = lax.add(grad_xp, lax.pad(routed, np.zeros((), g.dtype), back))
    return (_unpad(grad_xp, config),)


@primitive_gate(P.reduce_window_max_p, save="both", params=_WINDOW_PARAMS)
def reduce_window_max(
    g,
    saved,
    *,
    window_dimensions,
    window_strides,
    padding,
    base_dilation,
    window_dilation,
    **params,
):
    """maxima over sliding windows (max pooling).  Local gradient: 1 at each window's maximum
    (the max gate routes); a tie within a window goes to the first, in window order, as JAX's
    select-and-scatter does (which also passes over a NaN to the element after it)."""
    return _window_chooser(
        g,
        saved,
        window_dimensions,
        window_strides,
        padding,
        base_dilation,
        window_dilation,
        -np.inf,
        lax.ge,
    )


reduce_window_max.defcases(
    _window_cases(P.reduce_window_max_p, -np.inf, lax.max, distinct, dilated_reference=False)
)
reduce_window_max.defkinks(_window_kinks(P.reduce_window_max_p, -np.inf, lax.max))


@primitive_gate(P.reduce_window_min_p, save="both", params=_WINDOW_PARAMS)
def reduce_window_min(
    g,
    saved,
    *,
    window_dimensions,
    window_strides,
    padding,
    base_dilation,
    window_dilation,
    **params,
):
    """minima over sliding windows.  Local gradient: 1 at each window's minimum (the first,
    in window order, on a tie, as JAX's select-and-scatter does)."""
    return _window_chooser(
        g,
        saved,
        window_dimensions,
        window_strides,
        padding,
        base_dilation,
        window_dilation,
        np.inf,
        lax.le,
    )


reduce_window_min.defcases(
    _window_cases(P.reduce_window_min_p, np.inf, lax.min, distinct, dilated_reference=False)
)
reduce_window_min.defkinks(_window_kinks(P.reduce_window_min_p, np.inf, lax.min))
