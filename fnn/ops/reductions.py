"""Reductions with a fused rule: mean, logsumexp, softmax, log_softmax (sum and max are JAX's own,
fnn.ops.aliases, differentiated by the rules of lax.reduce_sum and lax.reduce_max).

`axis` is None (all axes), an int or a tuple of ints; `keepdims` as in numpy. Every rule first
re-expands g to the kept-dims shape (`_expand`), then broadcasts it against the input.
"""

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff.case_values import normal
from fnn.autodiff.gate import Case, defgate
from fnn.ops._dtypes import inexact
from fnn.ops.aliases import reduction_axes as _axes


def _shift(x, axes):
    """The max over `axes` (keepdims), as a stabilizing shift: 0 where it is not finite (an
    all -inf row, or an empty axis, whose max is -inf)."""
    m = jnp.max(x, axis=axes, keepdims=True, initial=-jnp.inf)
    return jnp.where(jnp.isfinite(m), m, jnp.zeros((), m.dtype))


def _expand(g, axes, keepdims):
    """g with the reduced axes put back as size-1 dims."""
    return g if keepdims else jnp.expand_dims(g, axes)


def _reduction_cases(make=normal):
    def cases(rng, dtype):
        specs = [
            ((3, 4), {}),
            ((3, 4), {"axis": 0}),
            ((2, 3, 4), {"axis": (0, 2), "keepdims": True}),
            ((5,), {"axis": -1}),
            ((), {}),
        ]
        return [Case((make(rng, s, dtype),), kw, label=f"{s},{kw}") for s, kw in specs]

    return cases


@defgate
def mean(x, *, axis=None, keepdims=False):
    """Mean over `axis`.  Local gradient: 1/n for every element (n = count reduced over).

    Args:
        x: the input.
        axis: the axis or axes reduced (None: all).
        keepdims: keep the reduced axes with size 1.

    Returns:
        The mean over `axis`.
    """
    axes = _axes(axis, jnp.ndim(x), "mean")  # over an empty axis: NaN, as jnp.mean
    return jnp.mean(x, axis=axes, keepdims=keepdims), np.shape(x)


@mean.defvjp
def mean_vjp(g, x_shape, *, axis=None, keepdims=False):
    axes = _axes(axis, len(x_shape), "mean")
    n = int(np.prod([x_shape[a] for a in axes]))
    if n == 0:  # nothing was averaged: an empty gradient
        return (jnp.zeros(x_shape, g.dtype),)
    return (jnp.broadcast_to(_expand(g, axes, keepdims) / n, x_shape),)


mean.defcases(_reduction_cases())
mean.defkinks(smooth=True)


# -inf entries, a row of -inf, a +inf entry
_INFS = np.array([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf], [np.inf, 0.0, 1.0]])


@defgate
def logsumexp(x, b=None, where=None, *, axis=None, keepdims=False, return_sign=False):
    """log(sum(b * exp(x))) over `axis`, max-shifted (stable); as jax.nn.logsumexp.

    b: weights broadcast against x (may be negative: with return_sign=True the result is
    (log|sum|, sign of the sum)); where: a boolean mask, entries outside it left out.
    Local gradients: d/dx = b exp(x - out) (the softmax for b = 1), d/db = exp(x - out), both
    times g and the sign of the sum; none through the sign output.

    Args:
        x: the input.
        b: weights broadcast against x (None: 1).
        where: a boolean mask (None: all entries).
        axis: the axis or axes reduced (None: all).
        keepdims: keep the reduced axes with size 1.
        return_sign: also return the sign of the sum.

    Returns:
        log|sum(b * exp(x))|, or (it, the sign) with return_sign=True.
    """
    x = inexact(x)
    axes = _axes(axis, jnp.ndim(x), "logsumexp")
    keep = None if where is None else jnp.broadcast_to(where, jnp.shape(x))
    masked = x if keep is None else jnp.where(keep, x, -jnp.inf)
    m = jax.lax.stop_gradient(_shift(masked, axes))
    e = jnp.exp(masked - m)
    eb = e if b is None else e * b
    s = jnp.sum(eb, axis=axes, keepdims=True)
    sign = jnp.sign(s)
    out = jnp.log(jnp.abs(s) if return_sign else s) + m
    out = out if keepdims else jnp.squeeze(out, axes)
    saved = (e, s, b, jnp.shape(x), None if b is None else jnp.result_type(b))
    if return_sign:
        return (out, sign if keepdims else jnp.squeeze(sign, axes)), saved
    return out, saved


@logsumexp.defvjp
def logsumexp_vjp(g, saved, *, needs, axis=None, keepdims=False, return_sign=False):
    e, s, b, x_shape, b_dtype = saved  # exp(x - m) and its weighted sum, from the forward
    if return_sign:
        g = g[0]  # the sign carries no gradient
    axes = _axes(axis, len(x_shape), "logsumexp")
    ge = e * (_expand(g, axes, keepdims) / s)  # d/db: exp(x - out), signed by s
    dx = ge if b is None else ge * b
    db = None
    if len(needs) > 1 and needs[1] and b is not None:
        from fnn.autodiff.gate import unbroadcast

        db = unbroadcast(ge.astype(b_dtype), b)
    grads = [dx.astype(e.dtype), db, None]  # x, b, where (never differentiated)
    return tuple(grads[: len(needs)])


def _logsumexp_cases(rng, dtype):
    cases = _reduction_cases()(rng, dtype)
    x = normal(rng, (3, 4), dtype)
    mask = np.ones((3, 4), bool)
    mask[:, 0] = False
    return cases + [
        Case((x, rng.uniform(0.5, 2.0, (3, 4)).astype(dtype)), {"axis": 1}, label="b weights"),
        Case(
            (x, rng.uniform(-1.0, 2.0, (4,)).astype(dtype) + 0.3),
            {"axis": 1, "return_sign": True},
            label="signed b, return_sign",
        ),
        Case((x, np.ones((3, 4), dtype), mask), {"axis": 1}, label="where mask"),
    ]


logsumexp.defcases(_logsumexp_cases)
logsumexp.defkinks(
    lambda dtype: [Case((_INFS.astype(dtype),), {"axis": 1}, label="-inf entries, rows of -inf")]
)


def _softmax_cases(rng, dtype):
    return [
        Case((normal(rng, (3, 5), dtype),)),
        Case((normal(rng, (2, 3, 4), dtype),), {"axis": 1}),
        Case((normal(rng, (6,), dtype, scale=3.0),)),
    ]


def _masked_softmax_cases(rng, dtype):
    mask = np.ones((3, 5), bool)
    mask[:, 1] = False  # (log_softmax's masked entries are -inf: tests/test_gates_params.py)
    return _softmax_cases(rng, dtype) + [
        Case((normal(rng, (3, 5), dtype), mask), label="where mask")
    ]


@defgate
def softmax(x, where=None, *, axis=-1):
    """exp(x) / sum(exp(x)) along `axis` (max-shifted).

    exp(x) / sum(exp(x)) along `axis` (max-shifted). where: a boolean mask; entries outside
    it get probability 0 (as jax.nn.softmax(..., where=)).

    Local gradient (no Jacobian): dx = y * (g - sum(g * y, axis)), 0 outside the mask.

    Args:
        x: the input.
        where: a boolean mask (None: all entries).
        axis: the axis normalized over.

    Returns:
        softmax(x), shaped like x.
    """
    axes = _axes(axis, jnp.ndim(x), "softmax")
    masked = x if where is None else jnp.where(where, x, -jnp.inf)
    z = masked - jax.lax.stop_gradient(_shift(masked, axes))
    e = jnp.exp(z)
    y = e / jnp.sum(e, axis=axes, keepdims=True)
    return y, y


@softmax.defvjp
def softmax_vjp(g, y, *, needs, axis=-1):
    axes = _axes(axis, y.ndim, "softmax")
    return (y * (g - jnp.sum(g * y, axis=axes, keepdims=True)),) + (None,) * (len(needs) - 1)


softmax.defcases(_masked_softmax_cases)
softmax.defkinks(lambda dtype: [Case((_INFS.astype(dtype),), label="-inf entries, rows of -inf")])


@defgate
def log_softmax(x, where=None, *, axis=-1):
    """x - logsumexp(x) along `axis` (max-shifted).

    x - logsumexp(x) along `axis` (max-shifted). where: a boolean mask; entries outside it
    are -inf (as jax.nn.log_softmax(..., where=)).

    Local gradient: dx = g - softmax(x) * sum(g, axis), over the entries inside the mask.

    Args:
        x: the input.
        where: a boolean mask (None: all entries).
        axis: the axis normalized over.

    Returns:
        log softmax(x), shaped like x.
    """
    axes = _axes(axis, jnp.ndim(x), "log_softmax")
    masked = x if where is None else jnp.where(where, x, -jnp.inf)
    z = masked - jax.lax.stop_gradient(_shift(masked, axes))
    e = jnp.exp(z)
    s = jnp.sum(e, axis=axes, keepdims=True)
    keep = None if where is None else jnp.broadcast_to(where, jnp.shape(x))
    return z - jnp.log(s), (e, s, keep)


@log_softmax.defvjp
def log_softmax_vjp(g, saved, *, needs, axis=-1):
    e, s, keep = saved  # softmax(x) = e / s, reusing the forward's exponentials
    axes = _axes(axis, e.ndim, "log_softmax")
    if keep is not None:
        g = jnp.where(keep, g, jnp.zeros((), g.dtype))
    dx = g - e * (jnp.sum(g, axis=axes, keepdims=True) / s)
    return (dx,) + (None,) * (len(needs) - 1)


log_softmax.defcases(_softmax_cases)
log_softmax.defkinks(
    lambda dtype: [Case((_INFS.astype(dtype),), label="-inf entries, rows of -inf")]
)
