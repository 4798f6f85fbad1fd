"""The lecture's names for JAX's own functions: `ops.add` is x + y, `ops.matmul` is x @ w, ...

These are not gates of their own. Each is the JAX function it names, so under `fnn.grad` it is
differentiated by the hand-written rule of its JAX primitive (fnn.ops.primitives: `lax.add`,
`lax.dot_general`, ...), the one place these derivatives are written, and a model written with
`fnn.ops` or with `jnp` gets the same gradients (JAX's, ties included). Each primitive's gate
declares the name here that is the lecture's for it (`primitive_gate(lax.mul_p,
lecture="multiply")`): graphs draw it under that name, and an override may name it so
(`rules={"matmul": ...}` is the rule of lax.dot_general). The lecture's
patterns, as the primitives' rules implement them:

    add distributes (both inputs get g),  mul swaps (dx = g*y, dy = g*x),
    max routes (g goes to the larger input; a tie splits it evenly, as JAX does),
    matmul: dx = g @ w.T, dw = x.T @ g (the shapes alone fix the order; no Jacobian is built).

Bad input is refused here with the op, the argument and the shapes named (fnn.GateError).
"""

from __future__ import annotations

import functools
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn.autodiff import nans
from fnn.autodiff.tape import call_site
from fnn.errors import GateError, describe


def _watched(fn):
    """`fn`, whose concrete outputs `fnn.debug_nans()` checks as it checks a gate's forward (a
    call outside fnn.grad, on arrays; under fnn.grad its primitives' gates are checked)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        if nans.active():
            nans.check(fn.__name__, "forward", call_site(), args, jax.tree_util.tree_leaves(out))
        return out

    return run


# ---- elementwise --------------------------------------------------------------------------------
def _broadcastable(op, *xs):
    """xs, if numpy's rules broadcast them together; else a GateError naming op and shapes."""
    try:
        np.broadcast_shapes(*(np.shape(x) for x in xs))
    except ValueError:
        raise GateError(
            f"gate '{op}': the inputs {', '.join(describe(x) for x in xs)} do not "
            "broadcast together (numpy's rules: trailing dims equal or 1)"
        ) from None
    return xs


@_watched
def add(x, y):
    """x + y (jnp.add, primitive lax.add).

    Local gradients: d/dx = 1, d/dy = 1 (the add gate distributes g).

    Args:
        x: the first input.
        y: the second input (broadcast against x).

    Returns:
        x + y, broadcast.

    Raises:
        fnn.GateError: the inputs do not broadcast together.
    """
    return jnp.add(*_broadcastable("add", x, y))


@_watched
def subtract(x, y):
    """x - y (lax.sub).  Local gradients: d/dx = 1, d/dy = -1.

    Args:
        x: the first input.
        y: the second input (broadcast against x).

    Returns:
        x - y, broadcast.

    Raises:
        fnn.GateError: the inputs do not broadcast together.
    """
    return jnp.subtract(*_broadcastable("subtract", x, y))


@_watched
def multiply(x, y):
    """x * y (lax.mul).  Local gradients: d/dx = y, d/dy = x (the mul gate swaps its inputs).

    Args:
        x: the first input.
        y: the second input (broadcast against x).

    Returns:
        x * y, broadcast.

    Raises:
        fnn.GateError: the inputs do not broadcast together.
    """
    return jnp.multiply(*_broadcastable("multiply", x, y))


@_watched
def divide(x, y):
    """x / y (lax.div).  Local gradients: d/dx = 1/y, d/dy = -x/y**2.

    Args:
        x: the first input.
        y: the second input (broadcast against x).

    Returns:
        x / y, broadcast.

    Raises:
        fnn.GateError: the inputs do not broadcast together.
    """
    return jnp.divide(*_broadcastable("divide", x, y))


@_watched
def negative(x):
    """-x (lax.neg).  Local gradient: -1.

    Args:
        x: the input (any shape).

    Returns:
        -x.
    """
    return jnp.negative(x)


@_watched
def power(x, y):
    """x ** y (jnp.power: lax.pow, or lax.integer_pow for a Python int y).

    Local gradients: d/dx = y x**(y-1), d/dy = log(x) x**y, with JAX's values at the special
    points (NaN at x == y == 0 for a float y, log(x) read as 0 where x == 0).

    Args:
        x: the base.
        y: the exponent (broadcast against x).

    Returns:
        x ** y, broadcast.

    Raises:
        fnn.GateError: the inputs do not broadcast together.
    """
    return jnp.power(*_broadcastable("power", x, y))


@_watched
def exp(x):
    """e**x (lax.exp).  Local gradient: e**x (the output itself).

    Args:
        x: the input (any shape).

    Returns:
        e**x, shaped like x.
    """
    return jnp.exp(x)


@_watched
def log(x):
    """Natural log (lax.log).  Local gradient: 1/x.

    Args:
        x: the input (any shape).

    Returns:
        log(x), shaped like x.
    """
    return jnp.log(x)


@_watched
def sqrt(x):
    """Square root (lax.sqrt).  Local gradient: 1 / (2 sqrt(x)).

    Args:
        x: the input (any shape).

    Returns:
        sqrt(x), shaped like x.
    """
    return jnp.sqrt(x)


@_watched
def abs(x):  # noqa: A001 - mirrors jnp.abs
    """|x| (lax.abs).  Local gradient: 1 where x >= 0, else -1 (1 at 0, as JAX's gradient gives).

    Args:
        x: the input (any shape).

    Returns:
        |x|, shaped like x.
    """
    return jnp.abs(x)


@_watched
def maximum(x, y):
    """max(x, y) elementwise (lax.max).

    Local gradients: 1 for the larger input, 0 for the other: the max gate routes g to the input
    that won. At a tie (x == y) the gradient is split evenly, g/2 to each, as JAX does.

    Args:
        x: the first input.
        y: the second input (broadcast against x).

    Returns:
        max(x, y), broadcast.

    Raises:
        fnn.GateError: the inputs do not broadcast together.
    """
    return jnp.maximum(*_broadcastable("maximum", x, y))


@_watched
def minimum(x, y):
    """min(x, y) elementwise (lax.min).

    Local gradients: 1 for the smaller input, 0 for the other; a tie splits the gradient evenly,
    as JAX does.

    Args:
        x: the first input.
        y: the second input (broadcast against x).

    Returns:
        min(x, y), broadcast.

    Raises:
        fnn.GateError: the inputs do not broadcast together.
    """
    return jnp.minimum(*_broadcastable("minimum", x, y))


@_watched
def where(condition, x, y):
    """x where condition else y (lax.select_n).

    Local gradients: condition for x, not condition for y; `condition` gets none. All three
    broadcast together.

    Args:
        condition: a boolean array (no gradient).
        x: taken where condition.
        y: taken elsewhere.

    Returns:
        The broadcast result.

    Raises:
        fnn.GateError: the inputs do not broadcast together.
    """
    return jnp.where(*_broadcastable("where", condition, x, y))


@_watched
def astype(x, *, dtype):
    """x cast to `dtype` (lax.convert_element_type).  Local gradient: 1, cast back to x's dtype.

    Args:
        x: the input (a float array).
        dtype: the float dtype to cast to.

    Returns:
        x cast to `dtype`.
    """
    return jnp.asarray(x).astype(dtype)


@_watched
def sigmoid(x):
    """1 / (1 + e**-x), computed stably (lax.logistic).  Local gradient: s (1 - s), s = output.

    Args:
        x: the input (any shape).

    Returns:
        sigmoid(x), shaped like x.
    """
    return jax.nn.sigmoid(x)


@_watched
def tanh(x):
    """Hyperbolic tangent (lax.tanh).  Local gradient: 1 - t**2, t = output.

    Args:
        x: the input (any shape).

    Returns:
        tanh(x), shaped like x.
    """
    return jnp.tanh(x)


@_watched
def stop_gradient(x):
    """x, with no gradient flowing back (lax.stop_gradient).  Local gradient: 0.

    Args:
        x: the input (any shape).

    Returns:
        x.
    """
    return lax.stop_gradient(x)


# ---- products and shapes ------------------------------------------------------------------------
@_watched
def matmul(x, w):
    """x @ w with numpy's rules (jnp.matmul, primitive lax.dot_general).

    Local gradients (2-D): dx = g @ w.T (N,K), dw = x.T @ g (K,M) for x (N,K), w (K,M), g (N,M).

    Args:
        x: the left operand.
        w: the right operand.

    Returns:
        x @ w.

    Raises:
        fnn.GateError: an operand has no dims, or the inner dimensions differ.
    """
    xs, ws = np.shape(x), np.shape(w)
    if len(xs) == 0 or len(ws) == 0:
        raise GateError(
            f"gate 'matmul': operands must have at least 1 dim, got x {describe(x)}, "
            f"w {describe(w)}"
        )
    kx, kw = xs[-1], (ws[0] if len(ws) == 1 else ws[-2])
    if kx != kw:
        raise GateError(
            f"gate 'matmul': inner dimensions differ: x {describe(x)} has {kx}, "
            f"w {describe(w)} has {kw}"
        )
    return jnp.matmul(x, w)


@_watched
def transpose(x, *, axes=None):
    """Permute axes, reversed when axes is None (lax.transpose).

    Local gradient: g permuted back by the inverse permutation.

    Args:
        x: the input.
        axes: the permutation (None: reversed).

    Returns:
        x with its axes permuted.
    """
    return jnp.transpose(x, axes)


@_watched
def reshape(x, *, shape):
    """x with a new shape, one entry may be -1 (lax.reshape).  Local gradient: g reshaped back.

    Args:
        x: the input.
        shape: the new shape (one entry may be -1).

    Returns:
        x reshaped.

    Raises:
        fnn.GateError: x cannot take `shape`.
    """
    try:
        return jnp.reshape(x, shape)
    except TypeError as e:
        raise GateError(
            f"gate 'reshape': cannot reshape x {describe(x)} to {tuple(shape)}: {e}"
        ) from e


@_watched
def broadcast_to(x, *, shape):
    """x broadcast to `shape` (lax.broadcast_in_dim).

    Local gradient: g summed over the broadcast axes.

    Args:
        x: the input.
        shape: the shape to broadcast to.

    Returns:
        x broadcast to `shape`.

    Raises:
        fnn.GateError: x cannot be broadcast to `shape`.
    """
    try:
        return jnp.broadcast_to(x, shape)
    except ValueError as e:
        raise GateError(
            f"gate 'broadcast_to': cannot broadcast x {describe(x)} to {tuple(shape)}"
        ) from e


@_watched
def concatenate(*xs, axis=0):
    """Join arrays along `axis`: concatenate(a, b, c, axis=1) (lax.concatenate).

    Local gradient: g split back into pieces of the inputs' sizes along `axis`.

    Args:
        *xs: the arrays, as separate arguments.
        axis: the axis they are joined along.

    Returns:
        The joined array.

    Raises:
        fnn.GateError: no array, or the arrays passed as one list.
    """
    if len(xs) == 1 and isinstance(xs[0], (list, tuple)):
        raise GateError(
            "gate 'concatenate': pass the arrays as separate arguments, "
            "concatenate(a, b, axis=...), not a list"
        )
    if not xs:
        raise GateError("gate 'concatenate': needs at least one array")
    return jnp.concatenate(xs, axis=axis)


@_watched
def take(x, indices, *, axis=None):
    """jnp.take(x, indices, axis): gather along `axis`, x flattened when axis is None.

    Its primitive is lax.gather. Local gradient: g scattered-and-added back to the gathered
    positions (repeats add up).

    Args:
        x: the input.
        indices: integer indices.
        axis: the axis gathered along (None: x flattened).

    Returns:
        The gathered entries.
    """
    return jnp.take(x, indices, axis=axis)


@_watched
def index(x, *, index):
    """x[index] for any numpy-style index (ints, slices, None, ..., integer arrays).

    JAX reads the index as lax.slice, squeeze, rev, gather or dynamic_slice.

    Local gradient: g added into a zero array at the indexed positions (repeats add up).

    Args:
        x: the input.
        index: a numpy-style index.

    Returns:
        x[index].

    Raises:
        fnn.GateError: x cannot be indexed with `index`.
    """
    try:
        return jnp.asarray(x)[index]
    except (IndexError, TypeError) as e:
        raise GateError(f"gate 'index': cannot index x {describe(x)} with {index!r}: {e}") from e


# ---- reductions ---------------------------------------------------------------------------------
def reduction_axes(axis, ndim, op):
    """`axis` (None, an int or ints) as sorted non-negative axes of an ndim-dim input; a
    GateError naming `op` for an axis out of range."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < ndim:  # a 0-d input has no axis to name (as in JAX)
            raise GateError(
                f"gate '{op}': axis {axis!r} is out of range for an input of "
                f"{ndim} dims" + (" (use axis=None)" if ndim == 0 else "")
            )
    return tuple(sorted(a % ndim for a in axes))


@_watched
def sum(x, *, axis=None, keepdims=False):  # noqa: A001 - mirrors jnp.sum
    """Sum over `axis` (lax.reduce_sum).  Local gradient: 1 for every element (g is copied back).

    Args:
        x: the input.
        axis: the axis or axes reduced (None: all).
        keepdims: keep the reduced axes with size 1.

    Returns:
        The sum over `axis`.

    Raises:
        fnn.GateError: an axis is out of range.
    """
    return jnp.sum(x, axis=reduction_axes(axis, jnp.ndim(x), "sum"), keepdims=keepdims)


@_watched
def max(x, *, axis=None, keepdims=False):  # noqa: A001 - mirrors jnp.max
    """Max over `axis` (lax.reduce_max).

    Local gradient: 1 for the maximal element, 0 elsewhere (max routes); a tie splits g evenly
    among the maxima of a group, as JAX does.

    Args:
        x: the input.
        axis: the axis or axes reduced (None: all).
        keepdims: keep the reduced axes with size 1.

    Returns:
        The max over `axis`.

    Raises:
        fnn.GateError: an axis is out of range, or the max is over an empty axis.
    """
    axes = reduction_axes(axis, jnp.ndim(x), "max")
    if any(np.shape(x)[a] == 0 for a in axes):
        raise GateError(f"gate 'max': max over an empty axis of x {describe(x)}")
    return jnp.max(x, axis=axes, keepdims=keepdims)


__all__ = [
    "abs",
    "add",
    "astype",
    "broadcast_to",
    "concatenate",
    "divide",
    "exp",
    "index",
    "log",
    "matmul",
    "max",
    "maximum",
    "minimum",
    "multiply",
    "negative",
    "power",
    "reshape",
    "sigmoid",
    "sqrt",
    "stop_gradient",
    "subtract",
    "sum",
    "take",
    "tanh",
    "transpose",
    "where",
]
