"""Convolution and pooling gates on NHWC images: x is (N, H, W, C), a conv kernel w is HWIO.

    conv2d      out[n,i,j,o] = sum_{a,b,c} xp[n, i*sh+a, j*sw+b, c] * w[a,b,c,o]   (xp: padded x)
                dx is a transposed convolution of g with the flipped kernel; dw correlates x with g.
    max_pool2d  routes g to the max of each window (one input per window, the first in row-major
                order on ties, as JAX); avg_pool2d spreads g / (kh*kw) evenly over each window.

Pools use VALID padding. When window == stride they take a reshape path: the windows become two
axes of a reshaped array, so the backward is a broadcast and a mask, not a select-and-scatter.
Other pools take a general path: max-pool loops over the kh*kw offsets of a window (a strided
slice of x, a mask, a strided pad back), avg-pool sums windows of g dilated by the stride.

Faster paths of conv2d's rules (same values; measured with `python -m fnn bench`): a 1x1 kernel
is a matrix product (dx and dw); a strided dx is sh*sw stride-1 correlations of g with
sub-kernels, interleaved, instead of one correlation of g dilated with zeros; with few input
channels dw is one matrix product of x's patches with g; otherwise dw is one convolution of x
with its width and channels folded into one axis (`_folded_dw`), so that x is transposed as a
2-D matrix rather than to (C, H, W, N). The forward pads 3 to 15 input channels with zeros up to
a multiple of 4, which XLA's CPU convolution runs much faster.
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn.autodiff.case_values import distinct, normal
from fnn.autodiff.gate import Case, defgate
from fnn.errors import GateError, describe

_DN = ("NHWC", "HWIO", "NHWC")  # conv2d's layouts; the backward ones are derived from these


def as_pair(v, what, gate):
    """An int or a pair of ints -> a pair of positive ints (GateError otherwise)."""
    pair = (v, v) if isinstance(v, (int, np.integer)) else tuple(np.atleast_1d(v))
    if len(pair) != 2 or not all(isinstance(p, (int, np.integer)) and p > 0 for p in pair):
        raise GateError(
            f"gate '{gate}': {what} must be a positive int or a pair of them, got {v!r}"
        )
    return int(pair[0]), int(pair[1])


def _check_image(gate, name, x):
    if np.ndim(x) != 4:
        raise GateError(f"gate '{gate}': {name} must be NHWC (rank 4), got {describe(x)}")


def conv_padding(x, w, strides, padding):
    """((pt, pb), (pl, pr)) for `padding` "VALID" | "SAME" | int | ((pt, pb), (pl, pr))."""
    if isinstance(padding, str) and padding.upper() in ("VALID", "SAME"):
        if padding.upper() == "VALID":
            return (0, 0), (0, 0)
        pads = []
        for n, k, s in zip(x.shape[1:3], w.shape[:2], strides):  # TF/JAX "SAME": ceil(n / s) out
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(padding, (int, np.integer)):
        return (int(padding),) * 2, (int(padding),) * 2
    try:
        (pt, pb), (pl, pr) = padding
        return (int(pt), int(pb)), (int(pl), int(pr))
    except (TypeError, ValueError):
        raise GateError(
            f"gate 'conv2d': padding must be 'VALID', 'SAME', an int or "
            f"((pt, pb), (pl, pr)), got {padding!r}"
        ) from None


# ---- conv2d ----------------------------------------------------------------------------------
@defgate
def conv2d(x, w, *, stride=1, padding="VALID"):
    """2-D convolution (cross-correlation, as in deep learning), no bias.

    x: (N, H, W, C), w: (KH, KW, C, O) -> out: (N, H', W', O), H' = (H + pt + pb - KH) // sh + 1.
    Local gradients: d out[n,i,j,o] / d xp[n, i*sh+a, j*sw+b, c] = w[a,b,c,o] and
    d out[n,i,j,o] / d w[a,b,c,o] = xp[n, i*sh+a, j*sw+b, c]. So dx = g convolved (transposed,
    stride as input dilation) with the spatially flipped kernel, and dw[a,b,c,o] =
    sum_{n,i,j} xp[n, i*sh+a, j*sw+b, c] g[n,i,j,o], a convolution of x with g as the kernel.

    Args:
        x: (N, H, W, C).
        w: (KH, KW, C, O) (HWIO).
        stride: (sh, sw), or an int for both.
        padding: "VALID", "SAME", an int, or ((pt, pb), (pl, pr)).

    Returns:
        (N, H', W', O).

    Raises:
        fnn.GateError: w is not rank 4, its channels do not match x's, or the padding is not valid.
    """
    _check_image("conv2d", "x", x)
    if np.ndim(w) != 4:
        raise GateError(
            f"gate 'conv2d': w must be HWIO (rank 4), got {describe(w)} for x {describe(x)}"
        )
    if x.shape[3] != w.shape[2]:
        raise GateError(
            f"gate 'conv2d': x {describe(x)} has {x.shape[3]} channels but w "
            f"{describe(w)} expects {w.shape[2]} (w is (KH, KW, C_in, C_out))"
        )
    strides = as_pair(stride, "stride", "conv2d")
    pads = conv_padding(x, w, strides, padding)
    # a kernel larger than the padded input (an empty input included) gives an empty output,
    # as in JAX
    # few channels (RGB): zeros up to a multiple of 4, which XLA's CPU convolutions run faster
    out = lax.conv_general_dilated(
        _pad_channels(x, 3), _pad_channels(w, 2), strides, pads, dimension_numbers=_DN
    )
    return out, (x, w, strides, pads)


def _pad_channels(a, axis):
    """`a` with zeros appended on `axis` (the input channels) up to a multiple of 4, when there
    are between 3 and 15 of them; otherwise `a` itself."""
    c = a.shape[axis]
    if not (2 < c < 16 and c % 4):
        return a
    return jnp.pad(a, [(0, -c % 4 if i == axis else 0) for i in range(a.ndim)])


@conv2d.defvjp
def conv2d_vjp(g, saved, *, stride=1, padding="VALID", needs):
    x, w, strides, pads = saved
    (kh, kw), out_hw = w.shape[:2], g.shape[1:3]
    if g.size == 0:  # an empty output: nothing flows back
        return (
            jnp.zeros(x.shape, x.dtype) if needs[0] else None,
            jnp.zeros(w.shape, w.dtype) if needs[1] else None,
        )
    dx = dw = None
    if (kh, kw) == (1, 1):  # a 1x1 kernel is a matrix product at every (strided) pixel
        return _pointwise_vjp(g, x, w, strides, pads, needs)
    if needs[0] and strides != (1, 1) and min(min(p) for p in pads) >= 0:
        dx = _strided_dx(g, w, x.shape, strides, pads).astype(x.dtype)
    elif needs[0]:
        # full correlation of the stride-dilated g with the flipped kernel, C and O swapped
        tpads = [
            (k - 1 - lo, n - (m - 1) * s - 1 + lo)
            for n, m, k, s, (lo, _) in zip(x.shape[1:3], out_hw, (kh, kw), strides, pads)
        ]
        dx = lax.conv_general_dilated(
            g,
            w[::-1, ::-1],
            (1, 1),
            tpads,
            lhs_dilation=strides,
            dimension_numbers=("NHWC", "HWOI", "NHWC"),
        )
        dx = dx.astype(x.dtype)
    if needs[1] and kh * kw * w.shape[2] <= 36 and w.shape[3] >= 32:
        dw = _patches_dw(x, g, w.shape, strides, pads).astype(w.dtype)
    elif needs[1]:
        # x correlated with g: batch N becomes the contracted feature axis
        wpads = [
            (lo, (m - 1) * s + k - n - lo)
            for n, m, k, s, (lo, _) in zip(x.shape[1:3], out_hw, (kh, kw), strides, pads)
        ]
        dw = _folded_dw(x, g, w.shape, strides, wpads).astype(w.dtype)
    return dx, dw


def _folded_dw(x, g, w_shape, strides, wpads):
    """dw as one convolution of x, its width and channels folded into one axis, with g as the
    kernel: out[0, a, b*C + c, o] = sum_{n,i,j} X[i*sh + a, (j*sw + b)*C + c, n] g[i, j, n, o]
    with X[h, w*C + c, n] = xp[n, h, w, c]. X is x transposed as the 2-D matrix (N, H*W*C), a
    copy that reads x in runs of H*W*C (XLA fuses x's producers into it); the usual (C, H, W, N)
    operand is a 4-D transpose that reads x a channel at a time."""
    n, h, wd, c = x.shape
    (kh, kw, _, o), (sh, sw) = w_shape, strides
    (lo_h, hi_h), (lo_w, hi_w) = wpads
    lhs = x.reshape(n, h * wd * c).T.reshape(1, h, wd * c, n)
    dw = lax.conv_general_dilated(
        lhs,
        jnp.transpose(g, (1, 2, 0, 3)),
        (1, 1),
        [(lo_h, hi_h), (lo_w * c, hi_w * c)],
        rhs_dilation=(sh, sw * c),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return dw.reshape(kh, kw, c, o)


def _strided_dx(g, w, x_shape, strides, pads):
    """dx of a strided conv without dilating g by the stride (which multiplies by zeros).

    Padded position p = q*s + r receives g only through the taps a = a'*s + r of its phase r,
    so each of the sh*sw phases is a stride-1 full correlation of g with the sub-kernel
    w[rh::sh, rw::sw] (the work of the forward, in all); the phases are then interleaved.
    """
    n, h, wd, c = x_shape
    (sh, sw), ((lo_h, _), (lo_w, _)) = strides, pads
    qh, qw = -(-(lo_h + h) // sh), -(-(lo_w + wd) // sw)  # phase lengths covering x
    rows = []
    for rh in range(sh):
        cols = []
        for rw in range(sw):
            sub = w[rh::sh, rw::sw]
            if sub.shape[0] == 0 or sub.shape[1] == 0:  # no tap lands on this phase
                cols.append(jnp.zeros((n, qh, qw, c), g.dtype))
                continue
            tpads = ((sub.shape[0] - 1, qh - g.shape[1]), (sub.shape[1] - 1, qw - g.shape[2]))
            cols.append(
                lax.conv_general_dilated(
                    g, sub[::-1, ::-1], (1, 1), tpads, dimension_numbers=("NHWC", "HWOI", "NHWC")
                )
            )
        rows.append(jnp.stack(cols, axis=3))  # (N, qh, qw, sw, C)
    dxp = jnp.stack(rows, axis=2).reshape(n, qh * sh, qw * sw, c)  # (N, qh, sh, qw, sw, C)
    return dxp[:, lo_h : lo_h + h, lo_w : lo_w + wd]


def _patches_dw(x, g, w_shape, strides, pads):
    """dw for few input channels (an image's first layer): the patches of x as a (KH*KW*C,
    N*H'*W') matrix in w's (a, b, c) row order, times g as (N*H'*W', O): one matrix product.
    XLA's weight-gradient convolution is slow on CPU when C is this small."""
    (kh, kw, c, o), (ho, wo) = w_shape, g.shape[1:3]
    xt = lax.pad(
        jnp.transpose(x, (3, 0, 1, 2)),
        np.zeros((), x.dtype),  # (C, N, H, W), padded
        ((0, 0, 0), (0, 0, 0), *((lo, hi, 0) for lo, hi in pads)),
    )
    taps = [
        lax.slice(
            xt,
            (0, 0, a, b),
            (c, x.shape[0], a + (ho - 1) * strides[0] + 1, b + (wo - 1) * strides[1] + 1),
            (1, 1, *strides),
        )
        for a in range(kh)
        for b in range(kw)
    ]
    dw = lax.dot_general(jnp.concatenate(taps, axis=0), g, (((1, 2, 3), (0, 1, 2)), ((), ())))
    return dw.reshape(kh, kw, c, o)


def _pointwise_vjp(g, x, w, strides, pads, needs):
    """dx, dw of a 1x1 conv: g @ w.T scattered back onto the strided pixels, and the strided
    pixels of x (padded) contracted with g over N, H', W'."""
    (sh, sw), (ho, wo) = strides, g.shape[1:3]
    dx = dw = None
    if needs[0]:
        d = lax.dot_general(g, w[0, 0], (((3,), (1,)), ((), ())))  # (N, H', W', C)
        zero = np.zeros((), d.dtype)
        dx = lax.pad(
            d,
            zero,
            (
                (0, 0, 0),
                *(
                    (-lo, n + lo - (m - 1) * s - 1, s - 1)
                    for n, m, s, (lo, _) in zip(x.shape[1:3], (ho, wo), (sh, sw), pads)
                ),
                (0, 0, 0),
            ),
        )
        dx = dx.astype(x.dtype)
    if needs[1]:
        xp = lax.pad(
            x, np.zeros((), x.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0))
        )
        xs = xp[:, : (ho - 1) * sh + 1 : sh, : (wo - 1) * sw + 1 : sw]
        dw = lax.dot_general(xs, g, (((0, 1, 2), (0, 1, 2)), ((), ())))[None, None]
        dw = dw.astype(w.dtype)
    return dx, dw


@conv2d.defcases
def _conv2d_cases(rng, dtype):
    specs = [
        ((2, 5, 5, 3), (3, 3, 3, 3), 1, "VALID"),
        ((2, 6, 6, 2), (3, 3, 2, 3), 1, "SAME"),
        ((2, 6, 6, 3), (3, 3, 3, 3), 2, "SAME"),
        ((2, 5, 6, 2), (2, 3, 2, 3), (2, 1), 1),
        ((2, 5, 5, 2), (3, 3, 2, 3), 2, ((1, 0), (0, 2))),
        ((1, 6, 6, 3), (1, 1, 3, 3), 2, "VALID"),
        ((2, 6, 5, 3), (3, 2, 3, 3), (3, 2), "VALID"),
        ((1, 5, 4, 1), (3, 3, 1, 32), 2, "SAME"),
    ]  # few in, many out channels: patches dw
    return [
        Case(
            (normal(rng, xs, dtype), normal(rng, ws, dtype, scale=0.5)),
            {"stride": s, "padding": p},
            label=f"{xs}*{ws} stride={s} padding={p}",
        )
        for xs, ws, s, p in specs
    ]


conv2d.defkinks(smooth=True)


# ---- pooling ---------------------------------------------------------------------------------
def _pool_geometry(gate, x, window, stride):
    """Validated window (kh, kw) and stride (sh, sw) of a VALID pool over x."""
    _check_image(gate, "x", x)
    k = as_pair(window, "window", gate)
    s = k if stride is None else as_pair(stride, "stride", gate)
    if k[0] > x.shape[1] or k[1] > x.shape[2]:
        raise GateError(f"gate '{gate}': window {k} is larger than the image of x {describe(x)}")
    return k, s


def _tiles(x, k, out_hw):
    """Non-overlapping windows as axes: (N, H', kh, W', kw, C) (rows/cols past them dropped)."""
    (kh, kw), (ho, wo) = k, out_hw
    return x[:, : ho * kh, : wo * kw].reshape(x.shape[0], ho, kh, wo, kw, x.shape[3])


def _untile(dt, x_shape):
    """Inverse of `_tiles` for gradients: reshape back and zero-pad the dropped rows/cols."""
    n, ho, kh, wo, kw, c = dt.shape
    d = dt.reshape(n, ho * kh, wo * kw, c)
    return jnp.pad(d, ((0, 0), (0, x_shape[1] - ho * kh), (0, x_shape[2] - wo * kw), (0, 0)))


def _offsets(x_shape, k, s, out_hw):
    """For each window offset (a, b): slicing of x onto the output grid, padding back onto x."""
    n, h, w, c = x_shape
    (ho, wo), zero = out_hw, (0, 0, 0)
    for a in range(k[0]):
        for b in range(k[1]):
            end_h, end_w = a + (ho - 1) * s[0] + 1, b + (wo - 1) * s[1] + 1
            yield (
                (0, a, b, 0),
                (n, end_h, end_w, c),
                (1, s[0], s[1], 1),
                (zero, (a, h - end_h, s[0] - 1), (b, w - end_w, s[1] - 1), zero),
            )


@defgate
def max_pool2d(x, *, window, stride=None):
    """Max over (kh, kw) windows, VALID padding; stride defaults to window.

    x: (N, H, W, C) -> out: (N, H', W', C), H' = (H - kh) // sh + 1. Local gradient: 1 for the
    max of each window, 0 for the rest (the max gate routes g). On ties g goes to ONE input, the
    first max of the window in row-major order, as JAX does (its rule is XLA's
    select-and-scatter, which also passes over a NaN to the element after it); overlapping
    windows add up.

    Args:
        x: (N, H, W, C).
        window: (kh, kw), or an int for both.
        stride: (sh, sw), or an int (None: the window).

    Returns:
        (N, H', W', C).

    Raises:
        fnn.GateError: x is not (N, H, W, C), the window or stride is not valid, or the window is
            larger than the image.
    """
    k, s = _pool_geometry("max_pool2d", x, window, stride)
    init = np.array(-np.inf, x.dtype)  # a concrete scalar, so JAX sees a max-pool (jit too)
    out = lax.reduce_window(x, init, lax.max, (1, *k, 1), (1, *s, 1), "VALID")
    return out, (x, out, k, s)


@max_pool2d.defvjp
def max_pool2d_vjp(g, saved, *, window, stride=None):
    x, out, k, s = saved
    out_hw = out.shape[1:3]
    if k == s:  # reshape and mask: a one-hot of each window's selected element
        t = _tiles(x, k, out_hw)
        chosen = _select_in_window([t[:, :, a, :, b, :] for a in range(k[0]) for b in range(k[1])])
        pos = lax.broadcasted_iota(jnp.int32, t.shape, 2) * k[1] + lax.broadcasted_iota(
            jnp.int32, t.shape, 4
        )  # row-major place in the window
        dt = jnp.where(
            pos == chosen[:, :, None, :, None, :], g[:, :, None, :, None, :], np.zeros((), g.dtype)
        )
        return (_untile(dt, x.shape),)
    offsets = list(_offsets(x.shape, k, s, out_hw))
    chosen = _select_in_window([lax.slice(x, start, end, step) for start, end, step, _ in offsets])
    dx = jnp.zeros(x.shape, g.dtype)
    zero = np.zeros((), g.dtype)
    for q, (_, _, _, pads) in enumerate(offsets):
        dx = dx + lax.pad(jnp.where(chosen == q, g, zero), zero, pads)
    return (dx,)


def _select_in_window(values):
    """Which of a window's values (listed in row-major order) gets its gradient: as XLA's
    select-and-scatter, which JAX's rule uses, selects it. The first value is selected, then
    replaced by each next one unless selected >= next: a tie keeps the first maximum, and a
    NaN is replaced by the value after it."""
    best, chosen = values[0], jnp.zeros(values[0].shape, jnp.int32)
    for q, v in enumerate(values[1:], 1):
        take = ~(best >= v)
        best, chosen = jnp.where(take, v, best), jnp.where(take, q, chosen)
    return chosen


# ties within and across windows, every value repeated, a NaN, infinities (4x4, 1 channel)
_TIED = np.array(
    [
        [1.0, 1.0, 0.0, 1.0],
        [0.0, 0.0, 0.0, 0.0],
        [2.0, 1.0, 2.0, 2.0],
        [np.nan, 1.0, np.inf, -np.inf],
    ]
)[None, :, :, None]


@max_pool2d.defcases
def _max_pool2d_cases(rng, dtype):
    specs = [
        ((2, 6, 6, 3), 2, None),
        ((2, 5, 5, 2), 2, None),
        ((2, 6, 6, 2), 3, 3),
        ((2, 5, 5, 3), 3, 2),
        ((2, 6, 5, 2), (2, 3), (1, 2)),
        ((1, 5, 6, 2), (3, 2), 1),
    ]
    return [
        Case(
            (distinct(rng, xs, dtype),),
            {"window": k, "stride": s},
            label=f"{xs} window={k} stride={s}",
        )
        for xs, k, s in specs
    ]


max_pool2d.defkinks(
    lambda dtype: [
        Case(
            (_TIED.astype(dtype),), {"window": w, "stride": s}, label=f"ties, window={w} stride={s}"
        )
        for w, s in ((2, None), (2, 1), ((3, 2), 1))
    ]
)


@defgate
def avg_pool2d(x, *, window, stride=None):
    """Mean over (kh, kw) windows, VALID padding; stride defaults to window.

    x: (N, H, W, C) -> out: (N, H', W', C), H' = (H - kh) // sh + 1. Local gradient: 1/(kh*kw)
    for every input of a window, so dx spreads g / (kh*kw) over each window (overlaps add up).

    Args:
        x: (N, H, W, C).
        window: (kh, kw), or an int for both.
        stride: (sh, sw), or an int (None: the window).

    Returns:
        (N, H', W', C).

    Raises:
        fnn.GateError: x is not (N, H, W, C), the window or stride is not valid, or the window is
            larger than the image.
    """
    k, s = _pool_geometry("avg_pool2d", x, window, stride)
    total = lax.reduce_window(x, np.zeros((), x.dtype), lax.add, (1, *k, 1), (1, *s, 1), "VALID")
    return total / (k[0] * k[1]), (x.shape, k, s)


@avg_pool2d.defvjp
def avg_pool2d_vjp(g, saved, *, window, stride=None):
    x_shape, k, s = saved
    out_hw = g.shape[1:3]
    share = g / (k[0] * k[1])
    if k == s:  # broadcast each window's share over the window
        dt = jnp.broadcast_to(
            share[:, :, None, :, None, :],
            (g.shape[0], out_hw[0], k[0], out_hw[1], k[1], g.shape[3]),
        )
        return (_untile(dt, x_shape),)
    # dilate g by the stride, pad by the window, and sum every window (the transposed pool)
    zero = np.zeros((), g.dtype)
    pads = (
        (0, 0, 0),
        *(
            (kk - 1, n - (m - 1) * ss - 1, ss - 1)
            for n, m, kk, ss in zip(x_shape[1:3], out_hw, k, s)
        ),
        (0, 0, 0),
    )
    dx = lax.reduce_window(
        lax.pad(share, zero, pads), zero, lax.add, (1, *k, 1), (1, 1, 1, 1), "VALID"
    )
    return (dx,)


@avg_pool2d.defcases
def _avg_pool2d_cases(rng, dtype):
    specs = [
        ((2, 6, 6, 3), 2, None),
        ((2, 5, 5, 2), 2, None),
        ((2, 5, 5, 3), 3, 2),
        ((2, 6, 5, 2), (2, 3), (1, 2)),
        ((1, 6, 6, 2), 6, None),
    ]
    return [
        Case(
            (normal(rng, xs, dtype),),
            {"window": k, "stride": s},
            label=f"{xs} window={k} stride={s}",
        )
        for xs, k, s in specs
    ]


avg_pool2d.defkinks(smooth=True)
