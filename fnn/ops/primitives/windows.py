"""Gates of the primitives of JAX's own derivative of pooling: select_and_gather_add (the
tangent of a window max/min: in each window, the tangent at the selected element) and
select_and_scatter_add (its transpose: each window's cotangent added at its selected element).
A loss that itself takes JAX's reverse-, forward-mode or linearized derivative of max pooling
holds them.

Both are linear in their first input, and the operand only decides where things go
(piecewise constant: no gradient, as in JAX). Each one's VJP is the other, as JAX's transpose
rules write it (jax/_src/lax/windowed_reductions.py): selection ties go to the first element
of the window, as in the forward.
"""

import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from fnn.autodiff.case_values import distinct, normal
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.primitive_cases import case
from fnn.errors import JAX_REFUSES_TOO, GateError

_SELECT = {"select_prim": (P.ge_p, P.le_p)}  # max (ge) or min (le) pooling


@primitive_gate(
    P.select_and_scatter_add_p,
    save="inputs",
    params=("window_dimensions", "window_strides", "padding"),
    only=_SELECT,
)
def select_and_scatter_add(
    g, inputs, *, select_prim, window_dimensions, window_strides, padding, **params
):
    """source's values added, window by window, at the element of `operand` each window
    selects (its max for ge, min for le; max pooling's backward).  Local gradients: for the
    source, g read at each window's selected element (select_and_gather_add); none for the
    operand."""
    _, operand = inputs
    ones = (1,) * len(window_dimensions)
    ds = P.select_and_gather_add_p.bind(
        g,
        operand,
        select_prim=select_prim,
        window_dimensions=window_dimensions,
        window_strides=window_strides,
        padding=padding,
        base_dilation=ones,
        window_dilation=ones,
    )
    return ds, None


@primitive_gate(
    P.select_and_gather_add_p,
    save="inputs",
    params=("window_dimensions", "window_strides", "padding", "base_dilation", "window_dilation"),
    only=_SELECT,
)
def select_and_gather_add(
    g,
    inputs,
    *,
    select_prim,
    window_dimensions,
    window_strides,
    padding,
    base_dilation,
    window_dilation,
    needs,
    **params,
):
    """per window, the value of `tangents` at the element of `operand` the window selects
    (the tangent of max pooling).  Local gradients: for the tangents, each window's g added
    at its selected element (select_and_scatter_add, on the operand padded where it was
    base-dilated); none for the operand. JAX has none with window dilation: refused."""
    tangents, operand = inputs
    if not needs[0]:
        return None, None
    if any(d != 1 for d in window_dilation):
        raise GateError(
            f"rule 'lax.select_and_gather_add': no gradient with window_dilation="
            f"{tuple(window_dilation)} (tangents {tangents.dtype}{list(tangents.shape)}): JAX "
            f"has no transpose of a dilated window selection either {JAX_REFUSES_TOO}."
        )
    dilated = any(d != 1 for d in base_dilation)
    if dilated:
        identity = -np.inf if select_prim is P.ge_p else np.inf
        operand = lax.pad(
            operand,
            np.asarray(identity, operand.dtype),
            tuple((0, 0, d - 1) for d in base_dilation),
        )
    dt = P.select_and_scatter_add_p.bind(
        g,
        operand,
        select_prim=select_prim,
        window_dimensions=window_dimensions,
        window_strides=window_strides,
        padding=padding,
    )
    if dilated:
        dt = lax.slice(dt, (0,) * dt.ndim, dt.shape, base_dilation)
    return dt, None


def _scatter(select, window, strides, padding):
    return lambda s, x: P.select_and_scatter_add_p.bind(
        s, x, select_prim=select, window_dimensions=window, window_strides=strides, padding=padding
    )


def _gather(select, window, strides, padding, base=None, dilation=None):
    ones = (1,) * len(window)
    return lambda t, x: P.select_and_gather_add_p.bind(
        t,
        x,
        select_prim=select,
        window_dimensions=window,
        window_strides=strides,
        padding=padding,
        base_dilation=base or ones,
        window_dilation=dilation or ones,
    )


NHWC = ((1, 2, 2, 1), (1, 2, 2, 1), ((0, 0),) * 4)  # a 2x2 max pool's windows, stride 2


@select_and_scatter_add.defcases
def _scatter_cases(rng, dtype):
    x = distinct(rng, (2, 4, 4, 3), dtype)
    return [
        case(
            P.select_and_scatter_add_p,
            _scatter(P.ge_p, *NHWC),
            normal(rng, (2, 2, 2, 3), dtype),
            x,
            fixed=(1,),
            label="2x2 max pool",
        ),
        case(
            P.select_and_scatter_add_p,
            _scatter(P.le_p, (3,), (2,), ((1, 1),)),
            normal(rng, (3,), dtype),
            distinct(rng, (6,), dtype),
            fixed=(1,),
            label="min, 1-d, stride 2, padded",
        ),
        case(
            P.select_and_scatter_add_p,
            _scatter(P.ge_p, (2, 2), (1, 1), ((0, 0), (0, 0))),
            normal(rng, (2, 3), dtype),
            distinct(rng, (3, 4), dtype),
            label="overlapping (the operand differentiated too: no gradient)",
        ),
    ]


@select_and_gather_add.defcases
def _gather_cases(rng, dtype):
    x = distinct(rng, (2, 4, 4, 3), dtype)
    dilated = _gather(P.ge_p, (2, 2), (1, 1), ((0, 0), (0, 0)), dilation=(2, 1))
    return [
        case(
            P.select_and_gather_add_p,
            _gather(P.ge_p, *NHWC),
            normal(rng, x.shape, dtype),
            x,
            fixed=(1,),
            label="2x2 max pool",
        ),
        case(
            P.select_and_gather_add_p,
            _gather(P.le_p, (3,), (1,), ((1, 1),)),
            normal(rng, (5,), dtype),
            distinct(rng, (5,), dtype),
            fixed=(1,),
            label="min, 1-d, SAME",
        ),
        case(
            P.select_and_gather_add_p,
            _gather(P.ge_p, (2, 2), (1, 1), ((0, 0), (0, 0)), base=(2, 1)),
            normal(rng, (3, 3), dtype),
            distinct(rng, (3, 3), dtype),
            fixed=(1,),
            label="base dilation",
        ),
        case(
            P.select_and_gather_add_p,
            _gather(P.ge_p, (2,), (1,), ((0, 0),)),
            normal(rng, (4,), dtype),
            distinct(rng, (4,), dtype),
            label="the operand differentiated too (no gradient)",
        ),
        case(
            P.select_and_gather_add_p,
            dilated,
            normal(rng, (4, 3), dtype),
            distinct(rng, (4, 3), dtype),
            fixed=(0,),
            label="window dilation, the operand alone (no gradient)",
        ),
    ]


def _ties(dtype):
    return np.asarray(
        [
            [1.0, 1.0, 0.0, 1.0],
            [0.0, 0.0, 0.0, 0.0],
            [2.0, 1.0, 2.0, 2.0],
            [np.nan, 1.0, np.inf, -np.inf],
        ],
        dtype,
    )


select_and_scatter_add.defkinks(
    lambda dtype: [
        case(
            P.select_and_scatter_add_p,
            _scatter(P.ge_p, (2, 2), (2, 2), ((0, 0), (0, 0))),
            np.arange(1.0, 5.0, dtype=dtype).reshape(2, 2),
            _ties(dtype),
            label="ties, NaN, inf",
        ),
        case(
            P.select_and_scatter_add_p,
            _scatter(P.le_p, (2, 2), (1, 1), ((1, 0), (0, 1))),
            np.arange(1.0, 17.0, dtype=dtype).reshape(4, 4),
            _ties(dtype),
            label="min, overlapping, padded",
        ),
    ]
)
select_and_gather_add.defkinks(
    lambda dtype: [
        case(
            P.select_and_gather_add_p,
            _gather(P.ge_p, (2, 2), (1, 1), ((0, 1), (1, 0))),
            np.arange(1.0, 17.0, dtype=dtype).reshape(4, 4),
            _ties(dtype),
            label="ties, NaN, inf, padded",
        ),
        case(
            P.select_and_gather_add_p,
            _gather(P.le_p, (2, 2), (2, 2), ((0, 0), (0, 0))),
            np.arange(1.0, 17.0, dtype=dtype).reshape(4, 4),
            _ties(dtype),
            label="min",
        ),
    ]
)
