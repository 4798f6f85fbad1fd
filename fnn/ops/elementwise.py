"""Elementwise gates, broadcasting like numpy. The lecture's patterns:

    add distributes (both inputs get g),  mul swaps (dx = g*y, dy = g*x),
    max routes (g goes to the larger input; a tie splits it evenly, as JAX does),
    a value used twice adds its gradients (engine).

Conventions: `g` is the upstream gradient, `saved` what the forward kept; every gradient is
passed through `unbroadcast`, which sums it back to its input's shape and dtype.
"""

import jax.numpy as jnp
import numpy as np

from fnn.autodiff.gate import Case, defgate, unbroadcast
from fnn.ops._cases import (BROADCAST_PAIRS, SPECIAL, away_from, normal, special_pairs,
                            special_points, unary_cases, uniform)


def _binary_cases(make_x=normal, make_y=normal):
    def cases(rng, dtype):
        return [Case((make_x(rng, sx, dtype), make_y(rng, sy, dtype)), label=f"{sx}x{sy}")
                for sx, sy in BROADCAST_PAIRS]
    return cases


def _positive(rng, shape, dtype):
    return uniform(rng, shape, dtype, 0.5, 2.0)


# ---- add: distributes ------------------------------------------------------------------------
@defgate
def add(x, y):
    """x + y.  Local gradients: d/dx = 1, d/dy = 1 (the add gate distributes g).

    Args:
        x: the first input.
        y: the second input (broadcast against x).

    Returns:
        x + y, broadcast.
    """
    return jnp.add(x, y), (x, y)


@add.defvjp
def add_vjp(g, saved):
    x, y = saved
    return unbroadcast(g, x), unbroadcast(g, y)


add.defcases(_binary_cases())
add.defkinks(special_pairs())


@defgate
def subtract(x, y):
    """x - y.  Local gradients: d/dx = 1, d/dy = -1.

    Args:
        x: the first input.
        y: the second input (broadcast against x).

    Returns:
        x - y, broadcast.
    """
    return jnp.subtract(x, y), (x, y)


@subtract.defvjp
def subtract_vjp(g, saved, *, needs):
    x, y = saved
    return unbroadcast(g, x), (unbroadcast(-g, y) if needs[1] else None)


subtract.defcases(_binary_cases())
subtract.defkinks(special_pairs())


# ---- multiply: swaps -------------------------------------------------------------------------
@defgate
def multiply(x, y):
    """x * y.  Local gradients: d/dx = y, d/dy = x (the mul gate swaps its inputs).

    Args:
        x: the first input.
        y: the second input (broadcast against x).

    Returns:
        x * y, broadcast.
    """
    return jnp.multiply(x, y), (x, y)


@multiply.defvjp
def multiply_vjp(g, saved, *, needs):
    x, y = saved
    return (unbroadcast(g * y, x) if needs[0] else None,
            unbroadcast(g * x, y) if needs[1] else None)


multiply.defcases(_binary_cases())
multiply.defkinks(special_pairs())


@defgate
def divide(x, y):
    """x / y.  Local gradients: d/dx = 1/y, d/dy = -x/y**2.

    Args:
        x: the first input.
        y: the second input (broadcast against x).

    Returns:
        x / y, broadcast.
    """
    return jnp.divide(x, y), (x, y)


@divide.defvjp
def divide_vjp(g, saved, *, needs):
    x, y = saved
    return (unbroadcast(g / y, x) if needs[0] else None,
            unbroadcast(-g * x * (1.0 / (y * y)), y) if needs[1] else None)


divide.defcases(_binary_cases(normal, lambda rng, s, d: away_from(rng, s, d, gap=0.5)))
divide.defkinks(special_pairs())


@defgate
def negative(x):
    """-x.  Local gradient: -1.

    Args:
        x: the input (any shape).

    Returns:
        -x.
    """
    return jnp.negative(x), None


@negative.defvjp
def negative_vjp(g, saved):
    return (-g,)


negative.defcases(unary_cases())
negative.defkinks(special_points())


@defgate
def power(x, y):
    """x ** y (jnp.power).  Local gradients: d/dx = y x**(y-1), d/dy = log(x) x**y.

    At the special points these are JAX's values (lax.pow's rule): d/dx is y x**(y-1) as
    computed, so NaN at x == y == 0 for a float y (0 times infinity), and 0 wherever an integer
    y is 0; d/dy reads log(x) as 0 where x == 0 (so it is 0 there for y >= 0, NaN for y < 0).
    d/dy needs x > 0 elsewhere, so it is only computed when y is being differentiated (x**2
    with x < 0 is fine).

    Args:
        x: the base.
        y: the exponent (broadcast against x).

    Returns:
        x ** y, broadcast.
    """
    out = jnp.power(x, y)
    return out, (x, y, out)


@power.defvjp
def power_vjp(g, saved, *, needs):
    x, y, out = saved
    dx = dy = None
    if needs[0]:
        if jnp.issubdtype(jnp.result_type(y), jnp.integer):
            y_f = jnp.asarray(y).astype(jnp.result_type(out))
            jac = jnp.where(y == 0, 0.0, jnp.where(y == 0, 1.0, y_f) * jnp.power(x, y_f - 1))
        else:
            jac = y * jnp.power(x, y - 1)
        dx = unbroadcast(g * jac, x)
    if needs[1]:
        dy = unbroadcast(g * (jnp.log(jnp.where(x == 0, 1.0, x)) * out), y)
    return dx, dy


power.defcases(_binary_cases(_positive, normal))
power.defkinks(lambda dtype: special_pairs(SPECIAL + (2.0, -0.5, 3.0))(dtype) + [  # x = 0 ...
    Case((np.zeros(6, dtype), np.asarray([0, 1, 2, 3, -1, -2], np.int32)),
         label="x = 0, integer exponents")])


# ---- unary functions ---------------------------------------------------------------------------
@defgate
def exp(x):
    """e**x.  Local gradient: e**x (the output itself).

    Args:
        x: the input (any shape).

    Returns:
        e**x, shaped like x.
    """
    out = jnp.exp(x)
    return out, out


@exp.defvjp
def exp_vjp(g, out):
    return (g * out,)


exp.defcases(unary_cases())
exp.defkinks(special_points())


@defgate
def log(x):
    """Natural log.  Local gradient: 1/x.

    Args:
        x: the input (any shape).

    Returns:
        log(x), shaped like x.
    """
    return jnp.log(x), x


@log.defvjp
def log_vjp(g, x):
    return (g / x,)


log.defcases(unary_cases(_positive))
log.defkinks(special_points())


@defgate
def sqrt(x):
    """Square root.  Local gradient: 1 / (2 sqrt(x)).

    Args:
        x: the input (any shape).

    Returns:
        sqrt(x), shaped like x.
    """
    out = jnp.sqrt(x)
    return out, out


@sqrt.defvjp
def sqrt_vjp(g, out):
    return (g * 0.5 / out,)


sqrt.defcases(unary_cases(_positive))
sqrt.defkinks(special_points())


@defgate
def abs(x):  # noqa: A001 - mirrors jnp.abs
    """|x| (jnp.abs).  Local gradient: 1 where x >= 0, else -1.

    At x == 0 the gradient is 1 (the right slope) and at NaN it is -1, as jax.grad of jnp.abs
    gives (JAX's rule is select(x >= 0, g, -g)).

    Args:
        x: the input (any shape).

    Returns:
        |x|, shaped like x.
    """
    return jnp.abs(x), x


@abs.defvjp
def abs_vjp(g, x):
    return (jnp.where(x >= 0, g, -g),)


abs.defcases(unary_cases(away_from))
abs.defkinks(special_points())


# ---- max gate: routes --------------------------------------------------------------------------
def _balanced(g, x, y, z, needs):
    """The max/min gate: g to the input equal to the output z, split evenly where x == y
    (JAX's rule for lax.max and lax.min; neither input gets any where z is NaN from the other).
    """
    def share(a, b):
        return jnp.where(a == z, 1.0, 0.0) / jnp.where(b == z, 2.0, 1.0)
    return (unbroadcast(g * share(x, y), x) if needs[0] else None,
            unbroadcast(g * share(y, x), y) if needs[1] else None)


@defgate
def maximum(x, y):
    """max(x, y) elementwise (jnp.maximum).

    Local gradients: 1 for the larger input, 0 for the other: the max gate routes g to the input
    that won.

    At a tie (x == y) the gradient is split evenly, g/2 to each, as JAX does. A NaN input
    makes the output NaN and neither input gets a gradient there.

    Args:
        x: the first input.
        y: the second input (broadcast against x).

    Returns:
        max(x, y), broadcast.
    """
    z = jnp.maximum(x, y)
    return z, (x, y, z)


@maximum.defvjp
def maximum_vjp(g, saved, *, needs):
    return _balanced(g, *saved, needs)


maximum.defcases(_binary_cases(lambda rng, s, d: away_from(rng, s, d, gap=0.2), normal))
maximum.defkinks(special_pairs())


@defgate
def minimum(x, y):
    """min(x, y) elementwise (jnp.minimum).

    Local gradients: 1 for the smaller input, 0 for the other; at a tie the gradient is split
    evenly, as JAX does.

    Args:
        x: the first input.
        y: the second input (broadcast against x).

    Returns:
        min(x, y), broadcast.
    """
    z = jnp.minimum(x, y)
    return z, (x, y, z)


@minimum.defvjp
def minimum_vjp(g, saved, *, needs):
    return _balanced(g, *saved, needs)


minimum.defcases(_binary_cases(lambda rng, s, d: away_from(rng, s, d, gap=0.2), normal))
minimum.defkinks(special_pairs())


@defgate
def where(condition, x, y):
    """x where condition else y.  Local gradients: condition for x, not condition for y.

    `condition` is a boolean array (no gradient); all three broadcast together.

    Args:
        condition: a boolean array (no gradient).
        x: taken where condition.
        y: taken elsewhere.

    Returns:
        The broadcast result.
    """
    return jnp.where(condition, x, y), (condition, x, y)


@where.defvjp
def where_vjp(g, saved, *, needs):
    condition, x, y = saved
    return (None, unbroadcast(jnp.where(condition, g, 0.0), x) if needs[1] else None,
            unbroadcast(jnp.where(condition, 0.0, g), y) if needs[2] else None)


@where.defcases
def _where_cases(rng, dtype):
    return [Case((rng.standard_normal(sc) > 0, normal(rng, sx, dtype), normal(rng, sy, dtype)),
                 label=f"{sc},{sx},{sy}")
            for sc, sx, sy in [((3, 4), (3, 4), (3, 4)), ((3, 4), (4,), ()), ((2, 1), (1, 3), (2, 3))]]


@where.defkinks
def _where_kinks(dtype):
    # NaN and infinities in the branch not taken get 0, in the one taken g
    x = np.asarray([np.nan, 1.0, np.inf, 0.0], dtype)
    y = np.asarray([2.0, np.nan, -np.inf, 0.0], dtype)
    return [Case((np.asarray([True, False, False, True]), x, y), label="NaN, inf, zeros")]


@defgate
def astype(x, *, dtype):
    """x cast to `dtype` (float to float).  Local gradient: 1, cast back to x's dtype.

    Args:
        x: the input (a float array).
        dtype: the float dtype to cast to.

    Returns:
        x cast to `dtype`.
    """
    return x.astype(dtype), jnp.result_type(x)


@astype.defvjp
def astype_vjp(g, x_dtype, *, dtype):
    return (g.astype(x_dtype),)


@astype.defcases
def _astype_cases(rng, dtype):
    other = "float32" if dtype == "float64" else "bfloat16"
    return [Case((normal(rng, (3, 4), dtype),), {"dtype": dtype}),
            Case((normal(rng, (5,), dtype),), {"dtype": other}, numeric=False)]
astype.defkinks(smooth=True)
