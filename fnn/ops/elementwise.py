"""Elementwise gates, broadcasting like numpy. The lecture's patterns:

    add distributes (both inputs get g),  mul swaps (dx = g*y, dy = g*x),
    max routes (g goes to the larger input),  a value used twice adds its gradients (engine).

Conventions: `g` is the upstream gradient, `saved` what the forward kept; every gradient is
passed through `unbroadcast`, which sums it back to its input's shape and dtype.
"""

import jax.numpy as jnp

from fnn.autodiff.gate import Case, defgate, unbroadcast
from fnn.ops._cases import BROADCAST_PAIRS, away_from, normal, unary_cases, uniform


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
    """x + y.  Local gradients: d/dx = 1, d/dy = 1 (the add gate distributes g)."""
    return jnp.add(x, y), (x, y)


@add.defvjp
def add_vjp(g, saved):
    x, y = saved
    return unbroadcast(g, x), unbroadcast(g, y)


add.defcases(_binary_cases())


@defgate
def subtract(x, y):
    """x - y.  Local gradients: d/dx = 1, d/dy = -1."""
    return jnp.subtract(x, y), (x, y)


@subtract.defvjp
def subtract_vjp(g, saved, *, needs):
    x, y = saved
    return unbroadcast(g, x), (unbroadcast(-g, y) if needs[1] else None)


subtract.defcases(_binary_cases())


# ---- multiply: swaps -------------------------------------------------------------------------
@defgate
def multiply(x, y):
    """x * y.  Local gradients: d/dx = y, d/dy = x (the mul gate swaps its inputs)."""
    return jnp.multiply(x, y), (x, y)


@multiply.defvjp
def multiply_vjp(g, saved, *, needs):
    x, y = saved
    return (unbroadcast(g * y, x) if needs[0] else None,
            unbroadcast(g * x, y) if needs[1] else None)


multiply.defcases(_binary_cases())


@defgate
def divide(x, y):
    """x / y.  Local gradients: d/dx = 1/y, d/dy = -x/y**2."""
    return jnp.divide(x, y), (x, y)


@divide.defvjp
def divide_vjp(g, saved, *, needs):
    x, y = saved
    return (unbroadcast(g / y, x) if needs[0] else None,
            unbroadcast(-g * x * (1.0 / (y * y)), y) if needs[1] else None)


divide.defcases(_binary_cases(normal, lambda rng, s, d: away_from(rng, s, d, gap=0.5)))


@defgate
def negative(x):
    """-x.  Local gradient: -1."""
    return jnp.negative(x), None


@negative.defvjp
def negative_vjp(g, saved):
    return (-g,)


negative.defcases(unary_cases())


@defgate
def power(x, y):
    """x ** y.  Local gradients: d/dx = y x**(y-1), d/dy = log(x) x**y.

    d/dx is 0 at x == y == 0 (where y x**(y-1) is 0 times infinity) and d/dy is 0 where x == 0;
    only those points are special-cased, so the rule's own derivatives are right elsewhere (at
    y == 0, d/dy of d/dx is 1/x). d/dy needs x > 0, so it is only computed when y is being
    differentiated (x**2 with x < 0 is fine).
    """
    out = jnp.power(x, y)
    return out, (x, y, out)


@power.defvjp
def power_vjp(g, saved, *, needs):
    x, y, out = saved
    dx = dy = None
    if needs[0]:
        origin = (x == 0) & (y == 0)
        dx = unbroadcast(g * jnp.where(origin, 0.0, y * jnp.power(jnp.where(origin, 1.0, x),
                                                                     y - 1)), x)
    if needs[1]:
        safe_x = jnp.where(x == 0, 1.0, x)
        dy = unbroadcast(g * jnp.where(x == 0, 0.0, jnp.log(safe_x) * out), y)
    return dx, dy


power.defcases(_binary_cases(_positive, normal))


# ---- unary functions ---------------------------------------------------------------------------
@defgate
def exp(x):
    """e**x.  Local gradient: e**x (the output itself)."""
    out = jnp.exp(x)
    return out, out


@exp.defvjp
def exp_vjp(g, out):
    return (g * out,)


exp.defcases(unary_cases())


@defgate
def log(x):
    """Natural log.  Local gradient: 1/x."""
    return jnp.log(x), x


@log.defvjp
def log_vjp(g, x):
    return (g / x,)


log.defcases(unary_cases(_positive))


@defgate
def sqrt(x):
    """Square root.  Local gradient: 1 / (2 sqrt(x))."""
    out = jnp.sqrt(x)
    return out, out


@sqrt.defvjp
def sqrt_vjp(g, out):
    return (g * 0.5 / out,)


sqrt.defcases(unary_cases(_positive))


@defgate
def abs(x):  # noqa: A001 - mirrors jnp.abs
    """|x|.  Local gradient: sign(x), taken as 0 at x == 0.

    The forward is written so that JAX's grad also gives 0 there (jnp.abs would give 1).
    """
    if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        return jnp.abs(x), x  # integers and bools as JAX has them (no gradient flows)
    return jnp.where(x > 0, x, jnp.where(x < 0, -x, jnp.zeros_like(x))), x


@abs.defvjp
def abs_vjp(g, x):
    return (g * jnp.sign(x),)


abs.defcases(unary_cases(away_from))


# ---- max gate: routes --------------------------------------------------------------------------
@defgate
def maximum(x, y):
    """max(x, y) elementwise.  Local gradients: 1 for the larger input, 0 for the other.

    The max gate routes g to the input that won. Ties (x == y) route all of g to x.
    """
    pick_x = x >= y
    return jnp.where(pick_x, x, y), (pick_x, x, y)  # jnp.maximum: JAX would split g at ties


def _route(g, pick_x, x, y, needs):
    """g to x where pick_x, to y elsewhere (the max gate, min gate and where all route)."""
    return (unbroadcast(jnp.where(pick_x, g, 0.0), x) if needs[0] else None,
            unbroadcast(jnp.where(pick_x, 0.0, g), y) if needs[1] else None)


@maximum.defvjp
def maximum_vjp(g, saved, *, needs):
    return _route(g, *saved, needs)


maximum.defcases(_binary_cases(lambda rng, s, d: away_from(rng, s, d, gap=0.2), normal))


@defgate
def minimum(x, y):
    """min(x, y) elementwise.  Local gradients: 1 for the smaller input; ties route g to x."""
    pick_x = x <= y
    return jnp.where(pick_x, x, y), (pick_x, x, y)


@minimum.defvjp
def minimum_vjp(g, saved, *, needs):
    return _route(g, *saved, needs)


minimum.defcases(_binary_cases(lambda rng, s, d: away_from(rng, s, d, gap=0.2), normal))


@defgate
def where(condition, x, y):
    """x where condition else y.  Local gradients: condition for x, not condition for y.

    `condition` is a boolean array (no gradient); all three broadcast together.
    """
    return jnp.where(condition, x, y), (condition, x, y)


@where.defvjp
def where_vjp(g, saved, *, needs):
    return (None, *_route(g, *saved, needs[1:]))


@where.defcases
def _where_cases(rng, dtype):
    return [Case((rng.standard_normal(sc) > 0, normal(rng, sx, dtype), normal(rng, sy, dtype)),
                 label=f"{sc},{sx},{sy}")
            for sc, sx, sy in [((3, 4), (3, 4), (3, 4)), ((3, 4), (4,), ()), ((2, 1), (1, 3), (2, 3))]]


@defgate
def astype(x, *, dtype):
    """x cast to `dtype` (float to float).  Local gradient: 1, cast back to x's dtype."""
    return x.astype(dtype), jnp.result_type(x)


@astype.defvjp
def astype_vjp(g, x_dtype, *, dtype):
    return (g.astype(x_dtype),)


@astype.defcases
def _astype_cases(rng, dtype):
    other = "float32" if dtype == "float64" else "bfloat16"
    return [Case((normal(rng, (3, 4), dtype),), {"dtype": dtype}),
            Case((normal(rng, (5,), dtype),), {"dtype": other}, numeric=False)]
