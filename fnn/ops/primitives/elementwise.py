"""Gates of JAX's elementwise primitives: arithmetic, transcendental functions, comparisons'
neighbours (select_n, clamp), dtype conversion.

Each gate binds its primitive (so it computes exactly what the traced program computes); its
VJP is the local derivative times the upstream gradient `g`, written with `lax`. Binary
primitives may take a scalar operand against an array (JAX's literals): `unbroadcast` sums the
gradient back to it. Ties of max/min split the gradient evenly, as JAX's rules do; the
piecewise-constant primitives (sign, floor, ceil, round) have gradient zero.
"""

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from fnn.autodiff.case_values import (
    SPECIAL,
    away_from,
    cdistinct,
    cnormal,
    complex_dtype,
    distinct,
    normal,
    positive,
    uniform,
)
from fnn.autodiff.gate import primitive_gate, unbroadcast
from fnn.autodiff.primitive_cases import case, special_binary, special_unary

SHAPES = ((), (3,), (2, 3))


def _c(x, value):
    """`value` as a constant of x's dtype (a Python scalar would promote float16/bfloat16)."""
    return np.asarray(value, dtype=jnp.result_type(x))


def unary_cases(primitive, fn, make=normal, shapes=SHAPES, complex_make=None):
    """Cases at each of `shapes`; with `complex_make` (a rule that takes complex values), one
    complex case more, its values drawn by complex_make (away from branch cuts and poles)."""

    def cases(rng, dtype):
        out = [case(primitive, fn, make(rng, s, dtype)) for s in shapes]
        if complex_make is not None:
            out.append(case(primitive, fn, complex_make(rng, (2, 3), dtype), label="complex"))
        return out

    return cases


def binary_cases(primitive, fn, make_x=normal, make_y=normal, complex_make=None):
    """As unary_cases, for two inputs: complex_make draws (x, y) of a complex case."""
    pairs = [((2, 3), (2, 3)), ((), ()), ((4,), (4,))]

    def cases(rng, dtype):
        out = [case(primitive, fn, make_x(rng, a, dtype), make_y(rng, b, dtype)) for a, b in pairs]
        # a scalar literal against an array, as jnp emits for `x * 2.0`
        out.append(
            case(
                primitive,
                lambda x: fn(x, _c(x, 1.5)),
                make_x(rng, (3,), dtype),
                label="array op literal",
            )
        )
        if complex_make is not None:
            out.append(case(primitive, fn, *complex_make(rng, (2, 3), dtype), label="complex"))
        return out

    return cases


# complex test values: anywhere; small (|z| < 0.6: inside the branch cuts of asin, acos, atan,
# asinh, atanh and away from the poles of tan and tanh); in the right half plane (away from the
# cut of log, sqrt and pow along the negative real axis, and from 0)
def _cplane(rng, shape, dtype):
    return cnormal(rng, shape, dtype)


def _csmall(rng, shape, dtype):
    return (cnormal(rng, shape, dtype) * 0.25).astype(complex_dtype(dtype))


def _cright(rng, shape, dtype):
    z = uniform(rng, shape, np.float64, 0.5, 2.0) + 1j * uniform(rng, shape, np.float64, -1, 1)
    return z.astype(complex_dtype(dtype))


def _cpair(make_x, make_y=_cplane):
    return lambda rng, shape, dtype: (make_x(rng, shape, dtype), make_y(rng, shape, dtype))


def _unit(rng, shape, dtype):
    return uniform(rng, shape, dtype, -0.8, 0.8)


# ---- arithmetic ---------------------------------------------------------------------------------
@primitive_gate(P.add_p, lecture="add", save="shapes", params=(), complex=True)
def add(g, shapes, **params):
    """x + y.  Local gradients: 1 and 1 (the add gate distributes)."""
    x, y = shapes
    return unbroadcast(g, x), unbroadcast(g, y)


add.defcases(binary_cases(P.add_p, lax.add, complex_make=_cpair(_cplane)))
add.defkinks(special_binary(P.add_p, lax.add))


@primitive_gate(P.add_jaxvals_p, lecture="add", save="shapes", params=(), complex=True)
def add_any(g, shapes, **params):
    """x + y of JAX's own gradient programs.  Local gradients: 1 and 1."""
    x, y = shapes
    return unbroadcast(g, x), unbroadcast(g, y)


add_any.defcases(
    lambda rng, dtype: [
        case(P.add_jaxvals_p, lambda x, y: P.add_jaxvals_p.bind(x, y), *make(rng, (2, 3), dtype))
        for make in (_cpair(normal, normal), _cpair(_cplane))
    ]
)
add_any.defkinks(smooth=True)


@primitive_gate(P.sub_p, lecture="subtract", save="shapes", params=(), complex=True)
def sub(g, shapes, **params):
    """x - y.  Local gradients: 1 and -1."""
    x, y = shapes
    return unbroadcast(g, x), unbroadcast(lax.neg(g), y)


sub.defcases(binary_cases(P.sub_p, lax.sub, complex_make=_cpair(_cplane)))
sub.defkinks(special_binary(P.sub_p, lax.sub))


@primitive_gate(P.mul_p, lecture="multiply", params=("out_dtype",), complex=True)
def mul(g, inputs, *, needs, out_dtype=None, **params):
    """x * y.  Local gradients: y and x (the mul gate swaps). With an `out_dtype` (the
    product computed in another dtype) each gradient is computed in its input's dtype, as
    JAX's rule does."""
    x, y = inputs

    def times(a, b, like):
        if out_dtype is None:
            return lax.mul(a, b)
        return P.mul_p.bind(a, b, out_dtype=jnp.result_type(like))

    return (
        unbroadcast(times(g, y, x), x) if needs[0] else None,
        unbroadcast(times(g, x, y), y) if needs[1] else None,
    )


mul.defcases(binary_cases(P.mul_p, lax.mul, complex_make=_cpair(_cplane)))
mul.defkinks(special_binary(P.mul_p, lax.mul))


@primitive_gate(P.div_p, lecture="divide", params=(), complex=True)
def div(g, inputs, *, needs, **params):
    """x / y.  Local gradients: 1/y and -x/y**2."""
    x, y = inputs
    return (
        unbroadcast(lax.div(g, y), x) if needs[0] else None,
        unbroadcast(lax.mul(lax.mul(lax.neg(g), x), lax.integer_pow(y, -2)), y)
        if needs[1]
        else None,
    )


div.defcases(
    binary_cases(
        P.div_p,
        lax.div,
        make_y=lambda r, s, d: away_from(r, s, d, gap=0.5),
        complex_make=_cpair(_cplane, _cright),
    )
)
div.defkinks(special_binary(P.div_p, lax.div))


@primitive_gate(P.neg_p, lecture="negative", save="none", params=(), complex=True)
def neg(g, saved, **params):
    """-x.  Local gradient: -1."""
    return (lax.neg(g),)


neg.defcases(unary_cases(P.neg_p, lax.neg, complex_make=_cplane))
neg.defkinks(special_unary(P.neg_p, lax.neg))


def _balanced(x, z, y):
    """1 where x is the chosen value z (0.5 where y ties with it), else 0: JAX's max/min rule."""
    one, zero = _c(z, 1), _c(z, 0)
    return lax.div(
        lax.select(lax.eq(x, z), lax.full_like(z, one), lax.full_like(z, zero)),
        lax.select(lax.eq(y, z), lax.full_like(z, 2 * one), lax.full_like(z, one)),
    )


def _chooser(g, saved, needs):
    (x, y), z = saved
    x_b, y_b = jnp.broadcast_to(x, z.shape), jnp.broadcast_to(y, z.shape)
    return (
        unbroadcast(lax.mul(g, _balanced(x_b, z, y_b)), x) if needs[0] else None,
        unbroadcast(lax.mul(g, _balanced(y_b, z, x_b)), y) if needs[1] else None,
    )


@primitive_gate(P.max_p, lecture="maximum", save="both", params=(), complex=True)
def max(g, saved, *, needs, **params):  # noqa: A001  (the primitive's name)
    """max(x, y).  Local gradients: 1 to the larger input (the max gate routes); a tie splits
    g evenly, as JAX's rule does. Complex values are ordered as JAX orders them
    (lexicographically: real part, then imaginary part)."""
    return _chooser(g, saved, needs)


def _chooser_cases(primitive, fn):
    """Cases of max/min: distinct values (no ties: those are kink cases), complex ones too."""
    return binary_cases(
        primitive,
        fn,
        make_x=lambda r, s, d: distinct(r, s, d) if s else normal(r, s, d),
        complex_make=_cpair(cdistinct, cdistinct),
    )


max.defcases(_chooser_cases(P.max_p, lax.max))
max.defkinks(special_binary(P.max_p, lax.max))


@primitive_gate(P.min_p, lecture="minimum", save="both", params=(), complex=True)
def min(g, saved, *, needs, **params):  # noqa: A001
    """min(x, y).  Local gradients: 1 to the smaller input; a tie splits g evenly."""
    return _chooser(g, saved, needs)


min.defcases(_chooser_cases(P.min_p, lax.min))
min.defkinks(special_binary(P.min_p, lax.min))


@primitive_gate(P.pow_p, lecture="power", save="both", params=(), complex=True)
def pow(g, saved, *, needs, **params):  # noqa: A001
    """x ** y.  Local gradients: y x**(y-1) and log(x) x**y, as JAX's rule writes them: for a
    float y, y x**(y-1) everywhere (NaN at x = y = 0, where it is 0 times infinity); for an
    integer y, 0 where y = 0; log(x) is read as 0 where x = 0 (so d/dy is NaN there for y < 0,
    0 times infinity)."""
    (x, y), z = saved
    dx = dy = None
    if needs[0]:
        y_c = jnp.broadcast_to(lax.convert_element_type(y, jnp.result_type(x)), z.shape)
        x_b = jnp.broadcast_to(x, z.shape)
        if jnp.issubdtype(jnp.result_type(y), jnp.integer):  # 0 wherever y == 0, as JAX
            at_zero = lax.eq(y_c, _c(y_c, 0))
            y_safe = lax.select(at_zero, lax.full_like(y_c, 1), y_c)
            jac = lax.select(
                at_zero,
                lax.full_like(y_c, 0),
                lax.mul(y_safe, lax.pow(x_b, lax.sub(y_c, _c(y_c, 1)))),
            )
        else:
            jac = lax.mul(y_c, lax.pow(x_b, lax.sub(y_c, _c(y_c, 1))))
        dx = unbroadcast(lax.mul(g, jac), x)
    if needs[1]:
        x_safe = lax.select(lax.eq(x, _c(x, 0)), lax.full_like(x, 1), x)
        dy = unbroadcast(lax.mul(g, lax.mul(lax.log(x_safe), z)), y)
    return dx, dy


pow.defcases(binary_cases(P.pow_p, lax.pow, make_x=positive, complex_make=_cpair(_cright, _csmall)))
_POW_POINTS = SPECIAL + (2.0, -0.5, 3.0)  # every x = 0 against y = 0, 1, 2, 0.5, negative, ...


@pow.defkinks
def _pow_kinks(dtype):
    x, y = np.meshgrid(np.asarray(_POW_POINTS, dtype), np.asarray(_POW_POINTS, dtype))
    n = np.asarray([0, 1, 2, 3, -1, -2, 0, 1, 2, -1], np.int32)  # an integer exponent array
    xs = np.asarray([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, -1.0, np.inf, np.nan], dtype)
    return special_binary(P.pow_p, lax.pow, _POW_POINTS)(dtype) + [
        case(P.pow_p, lax.pow, xs, n, label="integer exponents, x = 0")
    ]


@primitive_gate(P.integer_pow_p, lecture="power", params=("y",), complex=True)
def integer_pow(g, inputs, *, y, **params):
    """x ** n for a static integer n.  Local gradient: n x**(n-1) (0 for n = 0)."""
    (x,) = inputs
    if y == 0:
        return (lax.full_like(x, 0),)
    return (lax.mul(g, lax.mul(_c(x, y), x if y == 2 else lax.integer_pow(x, y - 1))),)


integer_pow.defcases(
    lambda rng, dtype: (
        [
            case(
                P.integer_pow_p,
                lambda x, n=n: lax.integer_pow(x, n),
                normal(rng, (2, 3), dtype),
                label=f"n={n}",
            )
            for n in (2, 3, -2, 1, 0)
        ]
        + [
            case(
                P.integer_pow_p,
                lambda x: lax.integer_pow(x, 3),
                normal(rng, (), dtype),
                label="0-d",
            ),
            case(
                P.integer_pow_p,
                lambda x: lax.integer_pow(x, 2),
                _cplane(rng, (2, 3), dtype),
                label="complex, n=2",
            ),
            case(
                P.integer_pow_p,
                lambda x: lax.integer_pow(x, -3),
                _cright(rng, (2, 3), dtype),
                label="complex, n=-3",
            ),
        ]
    )
)


integer_pow.defkinks(
    lambda dtype: [
        case(
            P.integer_pow_p,
            lambda x, n=n: lax.integer_pow(x, n),
            np.asarray(SPECIAL, dtype),
            label=f"n={n} at special points",
        )
        for n in (2, 3, -2, -1, 1, 0)
    ]
)


@primitive_gate(P.square_p, params=(), complex=True)
def square(g, inputs, **params):
    """x**2.  Local gradient: 2x."""
    (x,) = inputs
    return (lax.mul(g, lax.mul(_c(x, 2), x)),)


square.defcases(unary_cases(P.square_p, lax.square, complex_make=_cplane))
square.defkinks(special_unary(P.square_p, lax.square))


@primitive_gate(P.rem_p, params=())
def rem(g, inputs, *, needs, **params):
    """x - trunc(x / y) y (C fmod).  Local gradients: 1 and -trunc(x / y)."""
    x, y = inputs
    dy = None
    if needs[1]:
        q = lax.div(x, y)
        dy = unbroadcast(lax.mul(lax.neg(g), lax.mul(lax.sign(q), lax.floor(lax.abs(q)))), y)
    return (unbroadcast(g, x) if needs[0] else None), dy


rem.defcases(binary_cases(P.rem_p, lax.rem, make_y=lambda r, s, d: uniform(r, s, d, 0.7, 1.3)))
rem.defkinks(special_binary(P.rem_p, lax.rem))


@primitive_gate(P.atan2_p, params=(), complex=True)
def atan2(g, inputs, *, needs, **params):
    """atan2(x, y).  Local gradients: y / (x**2 + y**2) and -x / (x**2 + y**2), for complex
    values too (JAX's rule, which XLA's complex atan2 agrees with)."""
    x, y = inputs
    r2 = lax.add(lax.square(x), lax.square(y))
    return (
        unbroadcast(lax.mul(g, lax.div(y, r2)), x) if needs[0] else None,
        unbroadcast(lax.mul(g, lax.div(lax.neg(x), r2)), y) if needs[1] else None,
    )


atan2.defcases(
    binary_cases(
        P.atan2_p,
        lax.atan2,
        make_y=lambda r, s, d: away_from(r, s, d, gap=0.3),
        complex_make=_cpair(_cright, _cright),
    )
)
atan2.defkinks(special_binary(P.atan2_p, lax.atan2))


# ---- exponentials and logarithms -------------------------------------------------------------------
@primitive_gate(P.exp_p, lecture="exp", save="out", params=("accuracy",), complex=True)
def exp(g, y, **params):
    """exp(x).  Local gradient: exp(x), the output."""
    return (lax.mul(g, y),)


exp.defcases(unary_cases(P.exp_p, lax.exp, complex_make=_cplane))
exp.defkinks(special_unary(P.exp_p, lax.exp))


@primitive_gate(P.exp2_p, save="out", params=("accuracy",), complex=True)
def exp2(g, y, **params):
    """2**x.  Local gradient: log(2) 2**x."""
    return (lax.mul(g, lax.mul(_c(y, np.log(2)), y)),)


exp2.defcases(unary_cases(P.exp2_p, lax.exp2, complex_make=_cplane))
exp2.defkinks(special_unary(P.exp2_p, lax.exp2))


@primitive_gate(P.log_p, lecture="log", params=("accuracy",), complex=True)
def log(g, inputs, **params):
    """log(x).  Local gradient: 1/x."""
    return (lax.div(g, inputs[0]),)


log.defcases(unary_cases(P.log_p, lax.log, positive, complex_make=_cright))
log.defkinks(special_unary(P.log_p, lax.log))


@primitive_gate(P.log1p_p, params=("accuracy",), complex=True)
def log1p(g, inputs, **params):
    """log(1 + x).  Local gradient: 1 / (1 + x)."""
    (x,) = inputs
    return (lax.div(g, lax.add(x, _c(x, 1))),)


log1p.defcases(unary_cases(P.log1p_p, lax.log1p, _unit, complex_make=_cright))
log1p.defkinks(special_unary(P.log1p_p, lax.log1p))


@primitive_gate(P.expm1_p, save="out", params=("accuracy",), complex=True)
def expm1(g, y, **params):
    """exp(x) - 1.  Local gradient: exp(x) = y + 1."""
    return (lax.mul(g, lax.add(y, _c(y, 1))),)


expm1.defcases(unary_cases(P.expm1_p, lax.expm1, complex_make=_cplane))
expm1.defkinks(special_unary(P.expm1_p, lax.expm1))


@primitive_gate(P.logistic_p, lecture="sigmoid", save="out", params=("accuracy",), complex=True)
def logistic(g, y, **params):
    """1 / (1 + exp(-x)), the sigmoid.  Local gradient: s (1 - s)."""
    return (lax.mul(g, lax.mul(y, lax.sub(_c(y, 1), y))),)


logistic.defcases(unary_cases(P.logistic_p, lax.logistic, complex_make=_csmall))
logistic.defkinks(special_unary(P.logistic_p, lax.logistic))


# ---- roots ---------------------------------------------------------------------------------------------
@primitive_gate(P.sqrt_p, lecture="sqrt", save="out", params=("accuracy",), complex=True)
def sqrt(g, y, **params):
    """sqrt(x).  Local gradient: 0.5 / sqrt(x)."""
    return (lax.mul(g, lax.div(_c(y, 0.5), y)),)


sqrt.defcases(unary_cases(P.sqrt_p, lax.sqrt, positive, complex_make=_cright))
sqrt.defkinks(special_unary(P.sqrt_p, lax.sqrt))


@primitive_gate(P.rsqrt_p, save="both", params=("accuracy",), complex=True)
def rsqrt(g, saved, **params):
    """1 / sqrt(x).  Local gradient: -0.5 y / x."""
    (x,), y = saved
    return (lax.mul(g, lax.mul(_c(x, -0.5), lax.div(y, x))),)


rsqrt.defcases(unary_cases(P.rsqrt_p, lax.rsqrt, positive, complex_make=_cright))
rsqrt.defkinks(special_unary(P.rsqrt_p, lax.rsqrt))


@primitive_gate(P.cbrt_p, save="out", params=("accuracy",))
def cbrt(g, y, **params):
    """x**(1/3).  Local gradient: 1 / (3 y**2)."""
    return (lax.mul(g, lax.mul(_c(y, 1 / 3), lax.integer_pow(y, -2))),)


cbrt.defcases(unary_cases(P.cbrt_p, lax.cbrt, lambda r, s, d: away_from(r, s, d, gap=0.3)))
cbrt.defkinks(special_unary(P.cbrt_p, lax.cbrt))


# ---- trigonometric and hyperbolic -----------------------------------------------------------------
@primitive_gate(P.sin_p, params=("accuracy",), complex=True)
def sin(g, inputs, **params):
    """sin(x).  Local gradient: cos(x)."""
    return (lax.mul(g, lax.cos(inputs[0])),)


sin.defcases(unary_cases(P.sin_p, lax.sin, complex_make=_cplane))
sin.defkinks(special_unary(P.sin_p, lax.sin))


@primitive_gate(P.cos_p, params=("accuracy",), complex=True)
def cos(g, inputs, **params):
    """cos(x).  Local gradient: -sin(x)."""
    return (lax.neg(lax.mul(g, lax.sin(inputs[0]))),)


cos.defcases(unary_cases(P.cos_p, lax.cos, complex_make=_cplane))
cos.defkinks(special_unary(P.cos_p, lax.cos))


@primitive_gate(P.tan_p, save="out", params=("accuracy",), complex=True)
def tan(g, y, **params):
    """tan(x).  Local gradient: 1 + tan(x)**2."""
    return (lax.mul(g, lax.add(_c(y, 1), lax.square(y))),)


tan.defcases(unary_cases(P.tan_p, lax.tan, _unit, complex_make=_csmall))
tan.defkinks(special_unary(P.tan_p, lax.tan))


@primitive_gate(P.asin_p, params=(), complex=True)
def asin(g, inputs, **params):
    """arcsin(x).  Local gradient: 1 / sqrt(1 - x**2)."""
    (x,) = inputs
    return (lax.mul(g, lax.rsqrt(lax.sub(_c(x, 1), lax.square(x)))),)


asin.defcases(unary_cases(P.asin_p, lax.asin, _unit, complex_make=_csmall))
asin.defkinks(special_unary(P.asin_p, lax.asin))


@primitive_gate(P.acos_p, params=(), complex=True)
def acos(g, inputs, **params):
    """arccos(x).  Local gradient: -1 / sqrt(1 - x**2)."""
    (x,) = inputs
    return (lax.mul(g, lax.neg(lax.rsqrt(lax.sub(_c(x, 1), lax.square(x))))),)


acos.defcases(unary_cases(P.acos_p, lax.acos, _unit, complex_make=_csmall))
acos.defkinks(special_unary(P.acos_p, lax.acos))


@primitive_gate(P.atan_p, params=(), complex=True)
def atan(g, inputs, **params):
    """arctan(x).  Local gradient: 1 / (1 + x**2)."""
    (x,) = inputs
    return (lax.div(g, lax.add(_c(x, 1), lax.square(x))),)


atan.defcases(unary_cases(P.atan_p, lax.atan, complex_make=_csmall))
atan.defkinks(special_unary(P.atan_p, lax.atan))


@primitive_gate(P.tanh_p, lecture="tanh", save="out", params=("accuracy",), complex=True)
def tanh(g, y, **params):
    """tanh(x).  Local gradient: 1 - tanh(x)**2."""
    return (lax.mul(g, lax.sub(_c(y, 1), lax.square(y))),)


tanh.defcases(unary_cases(P.tanh_p, lax.tanh, complex_make=_csmall))
tanh.defkinks(special_unary(P.tanh_p, lax.tanh))


@primitive_gate(P.sinh_p, params=(), complex=True)
def sinh(g, inputs, **params):
    """sinh(x).  Local gradient: cosh(x)."""
    return (lax.mul(g, lax.cosh(inputs[0])),)


sinh.defcases(unary_cases(P.sinh_p, lax.sinh, complex_make=_cplane))
sinh.defkinks(special_unary(P.sinh_p, lax.sinh))


@primitive_gate(P.cosh_p, params=(), complex=True)
def cosh(g, inputs, **params):
    """cosh(x).  Local gradient: sinh(x)."""
    return (lax.mul(g, lax.sinh(inputs[0])),)


cosh.defcases(unary_cases(P.cosh_p, lax.cosh, complex_make=_cplane))
cosh.defkinks(special_unary(P.cosh_p, lax.cosh))


@primitive_gate(P.asinh_p, params=(), complex=True)
def asinh(g, inputs, **params):
    """arcsinh(x).  Local gradient: 1 / sqrt(x**2 + 1)."""
    (x,) = inputs
    return (lax.mul(g, lax.rsqrt(lax.add(lax.square(x), _c(x, 1)))),)


asinh.defcases(unary_cases(P.asinh_p, lax.asinh, complex_make=_csmall))
asinh.defkinks(special_unary(P.asinh_p, lax.asinh))


@primitive_gate(P.acosh_p, params=(), complex=True)
def acosh(g, inputs, **params):
    """arccosh(x), x > 1.  Local gradient: 1 / sqrt(x**2 - 1)."""
    (x,) = inputs
    return (lax.mul(g, lax.rsqrt(lax.sub(lax.square(x), _c(x, 1)))),)


acosh.defcases(
    unary_cases(
        P.acosh_p,
        lax.acosh,
        lambda r, s, d: uniform(r, s, d, 1.5, 3.0),
        complex_make=lambda r, s, d: _cright(r, s, d) + 1,
    )
)
acosh.defkinks(special_unary(P.acosh_p, lax.acosh))


@primitive_gate(P.atanh_p, params=(), complex=True)
def atanh(g, inputs, **params):
    """arctanh(x), |x| < 1.  Local gradient: 1 / (1 - x**2)."""
    (x,) = inputs
    return (lax.mul(lax.reciprocal(lax.add(_c(x, 1), x)), lax.div(g, lax.sub(_c(x, 1), x))),)


atanh.defcases(unary_cases(P.atanh_p, lax.atanh, _unit, complex_make=_csmall))
atanh.defkinks(special_unary(P.atanh_p, lax.atanh))


# ---- special functions --------------------------------------------------------------------------------
@primitive_gate(P.erf_p, params=())
def erf(g, inputs, **params):
    """erf(x).  Local gradient: 2 / sqrt(pi) exp(-x**2)."""
    (x,) = inputs
    return (lax.mul(_c(x, 2 / np.sqrt(np.pi)), lax.mul(g, lax.exp(lax.neg(lax.square(x))))),)


erf.defcases(unary_cases(P.erf_p, lax.erf))
erf.defkinks(special_unary(P.erf_p, lax.erf))


@primitive_gate(P.erfc_p, params=())
def erfc(g, inputs, **params):
    """1 - erf(x).  Local gradient: -2 / sqrt(pi) exp(-x**2)."""
    (x,) = inputs
    return (lax.mul(_c(x, -2 / np.sqrt(np.pi)), lax.mul(g, lax.exp(lax.neg(lax.square(x))))),)


erfc.defcases(unary_cases(P.erfc_p, lax.erfc))
erfc.defkinks(special_unary(P.erfc_p, lax.erfc))


@primitive_gate(P.erf_inv_p, save="out", params=())
def erf_inv(g, y, **params):
    """erf^-1(x), |x| < 1.  Local gradient: sqrt(pi) / 2 exp(y**2)."""
    return (lax.mul(_c(y, np.sqrt(np.pi) / 2), lax.mul(g, lax.exp(lax.square(y)))),)


erf_inv.defcases(unary_cases(P.erf_inv_p, lax.erf_inv, _unit))
erf_inv.defkinks(special_unary(P.erf_inv_p, lax.erf_inv))


@primitive_gate(P.lgamma_p, params=())
def lgamma(g, inputs, **params):
    """log|Gamma(x)|.  Local gradient: digamma(x)."""
    return (lax.mul(g, lax.digamma(inputs[0])),)


lgamma.defcases(unary_cases(P.lgamma_p, lax.lgamma, positive))
lgamma.defkinks(special_unary(P.lgamma_p, lax.lgamma))


@primitive_gate(P.digamma_p, params=())
def digamma(g, inputs, **params):
    """digamma(x) = d/dx log Gamma(x).  Local gradient: polygamma(1, x)."""
    (x,) = inputs
    return (lax.mul(g, lax.polygamma(_c(x, 1), x)),)


digamma.defcases(unary_cases(P.digamma_p, lax.digamma, positive))
digamma.defkinks(special_unary(P.digamma_p, lax.digamma))


# ---- piecewise ----------------------------------------------------------------------------------------
@primitive_gate(P.abs_p, lecture="abs", save="both", params=(), complex=True)
def abs(g, saved, **params):  # noqa: A001
    """|x|.  Local gradient: 1 where x >= 0, else -1 (so 1 at 0, and -1 at NaN: JAX's rule,
    select(x >= 0, g, -g)). Of a complex z (JAX's convention): g conj(z) / |z|, and 0 at z = 0
    (JAX divides by |z| with 0 replaced by 1)."""
    (x,), y = saved
    if jnp.iscomplexobj(x):
        r = lax.convert_element_type(y, x.dtype)
        r = lax.select(lax.eq(r, _c(r, 0)), lax.full_like(r, 1), r)
        return (lax.mul(lax.complex(g, lax.full_like(g, 0)), lax.div(lax.conj(x), r)),)
    return (lax.select(lax.ge(x, _c(x, 0)), g, lax.neg(g)),)


@abs.defcases
def _abs_cases(rng, dtype):
    return unary_cases(P.abs_p, lax.abs, lambda r, s, d: away_from(r, s, d))(rng, dtype) + [
        case(P.abs_p, lax.abs, cnormal(rng, (2, 3), dtype), label="complex")
    ]


@abs.defkinks
def _abs_kinks(dtype):
    points = np.asarray(SPECIAL, dtype)
    z = np.asarray([0, 1j, -1, 1 - 1j, np.inf, 1j * np.inf, np.nan, 0j - 0.0], complex_dtype(dtype))
    return [
        case(P.abs_p, lax.abs, points, label="special points"),
        case(P.abs_p, lax.abs, z, label="complex special points"),
    ]


def _zero_rule(doc):
    def rule(g, shapes, **params):
        return tuple(lax.full(s.shape, 0, s.dtype) for s in shapes)

    rule.__doc__ = doc
    return rule


def _zero_gate(primitive, name, doc, fn, params=(), complex=False):  # noqa: A002
    rule = _zero_rule(doc)
    rule.__name__ = rule.__qualname__ = name
    gate = primitive_gate(primitive, save="shapes", params=params, complex=complex)(rule)
    real_cases = unary_cases(primitive, fn, lambda r, s, d: distinct(r, s, d, gap=0.3) + 0.1)
    # of a complex z, sign(z) = z / |z| varies smoothly, but JAX's gradient is 0 there too:
    # compared with JAX alone
    gate.defcases(
        lambda rng, dtype: (
            real_cases(rng, dtype)
            + (
                [case(primitive, fn, _cplane(rng, (2, 3), dtype), numeric=False, label="complex")]
                if complex
                else []
            )
        )
    )
    gate.defkinks(special_unary(primitive, fn, SPECIAL + (1.5, 2.5, -0.5, -1.5)))  # steps too
    return gate


sign = _zero_gate(
    P.sign_p,
    "sign",
    "sign(x).  Local gradient: 0 (piecewise constant; of a "
    "complex z, z / |z|: 0 too, as JAX's rule).",
    lax.sign,
    complex=True,
)
floor = _zero_gate(
    P.floor_p, "floor", "floor(x).  Local gradient: 0 (piecewise constant).", lax.floor
)
ceil = _zero_gate(P.ceil_p, "ceil", "ceil(x).  Local gradient: 0 (piecewise constant).", lax.ceil)
round = _zero_gate(
    P.round_p,
    "round",
    "round(x).  Local gradient: 0 (piecewise constant, "  # noqa: A001
    "whichever rounding_method).",
    lax.round,
    params=("rounding_method",),
)


@primitive_gate(P.clamp_p, params=())
def clamp(g, inputs, *, needs, **params):
    """min(max(x, lo), hi).  Local gradients: 1 to x strictly inside (lo, hi), to lo where x <
    lo < hi, to hi where x > hi (JAX's rule)."""
    lo, x, hi = inputs
    lo_b, hi_b = jnp.broadcast_to(lo, x.shape), jnp.broadcast_to(hi, x.shape)
    zero = lax.full_like(g, 0)
    d_lo = lax.select(lax.bitwise_and(lax.gt(lo_b, x), lax.lt(lo_b, hi_b)), g, zero)
    d_x = lax.select(lax.bitwise_and(lax.gt(x, lo_b), lax.lt(x, hi_b)), g, zero)
    d_hi = lax.select(lax.lt(hi_b, x), g, zero)
    return (
        unbroadcast(d_lo, lo) if needs[0] else None,
        d_x if needs[1] else None,
        unbroadcast(d_hi, hi) if needs[2] else None,
    )


@clamp.defcases
def _clamp_cases(rng, dtype):
    # (JAX's own rule fails for differentiated scalar bounds: central differences judge fnn's)
    x = (np.linspace(-2, 2, 12).reshape(3, 4) + 0.05).astype(dtype)
    lo = np.full(x.shape, -1.0, dtype)
    scalar = lambda x: lax.clamp(_c(x, -1.0), x, _c(x, 1.5))
    return [
        case(
            P.clamp_p,
            lax.clamp,
            lo,
            x,
            (normal(rng, x.shape, dtype) + 2).astype(dtype),
            label="array bounds",
        ),
        case(P.clamp_p, scalar, x, fixed=(0, 2), label="scalar bounds"),
        case(P.clamp_p, scalar, x, reference=False, label="scalar bounds differentiated"),
    ]


@clamp.defkinks
def _clamp_kinks(dtype):
    # x at each bound, bounds equal (lo == x == hi), x beyond them, NaN in each place
    nan = np.nan
    lo = np.asarray([0, 0, 0, 1, 1, 0, nan, 0, 0, 2], dtype)
    x = np.asarray([0, 1, 2, 1, 0, nan, 0, 1, 1, 1], dtype)
    hi = np.asarray([1, 1, 1, 1, 1, 1, 1, nan, 0, 1], dtype)
    return [case(P.clamp_p, lax.clamp, lo, x, hi, label="ties, NaN, lo > hi")]


@primitive_gate(P.select_n_p, lecture="where", save="inputs", params=(), complex=True)
def select_n(g, inputs, **params):
    """cases[which] elementwise (jnp.where).  Local gradients: g to the chosen case, 0 to the
    others; none for the integer or bool selector."""
    which, *cases = inputs
    zero = lax.full_like(g, 0)
    if len(cases) == 2 and jnp.result_type(which) == jnp.bool_:
        return (None, lax.select(which, zero, g), lax.select(which, g, zero))
    which = jnp.broadcast_to(which, g.shape)
    return (None,) + tuple(
        lax.select(lax.eq(which, np.asarray(i, which.dtype)), g, zero) for i in range(len(cases))
    )


@select_n.defcases
def _select_n_cases(rng, dtype):
    x, y, z = (normal(rng, (3, 4), dtype) for _ in range(3))
    return [
        case(P.select_n_p, lax.select_n, x > 0, x, y, label="bool"),
        case(
            P.select_n_p,
            lax.select_n,
            rng.integers(0, 3, (3, 4)).astype(np.int32),
            x,
            y,
            z,
            label="int32 of 3",
        ),
        case(
            P.select_n_p,
            lax.select_n,
            x > 0,
            _cplane(rng, (3, 4), dtype),
            _cplane(rng, (3, 4), dtype),
            label="complex",
        ),
    ]


@select_n.defkinks
def _select_n_kinks(dtype):
    # NaN and infinity in the case not taken: it gets 0, the taken one g
    x = np.asarray([np.nan, 1.0, np.inf, 2.0], dtype)
    y = np.asarray([1.0, np.nan, 3.0, -np.inf], dtype)
    return [
        case(
            P.select_n_p,
            lax.select_n,
            np.asarray([True, False, True, False]),
            x,
            y,
            label="NaN and inf not taken",
        ),
        case(
            P.select_n_p,
            lax.select_n,
            np.asarray([False, True, False, True]),
            x,
            y,
            label="NaN and inf taken",
        ),
    ]


@primitive_gate(
    P.convert_element_type_p,
    lecture="astype",
    save="shapes",
    params=("new_dtype", "weak_type"),
    only={"sharding": (None,)},
    complex=True,
)
def convert_element_type(g, shapes, **params):
    """x cast to another dtype.  Local gradient: 1, g cast back to x's dtype (none from an
    integer output). Between real and complex (JAX's convention): a real x gets Re(g), a
    complex x (cast to real: its real part) complex(g, 0)."""
    (x,) = shapes
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return (None,)
    # the primitive itself, as JAX's transpose binds it: complex -> real takes the real part
    return (P.convert_element_type_p.bind(g, new_dtype=x.dtype, weak_type=False, sharding=None),)


@convert_element_type.defcases
def _convert_cases(rng, dtype):
    x = normal(rng, (2, 3), dtype)
    other = np.float32 if dtype == "float64" else np.float16
    to_real = lambda z: P.convert_element_type_p.bind(
        z, new_dtype=np.dtype(dtype), weak_type=False, sharding=None
    )
    return [
        case(
            P.convert_element_type_p, lambda x: lax.convert_element_type(x, other), x, numeric=False
        ),  # the differences would measure the rounding to `other`
        case(
            P.convert_element_type_p,
            lambda x: lax.convert_element_type(x.astype(other), dtype),
            x.astype(other),
            label="up",
        ),
        case(
            P.convert_element_type_p,
            lambda x: lax.convert_element_type(x, complex_dtype(dtype)),
            x,
            label="real to complex",
        ),
        case(
            P.convert_element_type_p, to_real, cnormal(rng, (2, 3), dtype), label="complex to real"
        ),
    ]


@primitive_gate(P.reduce_precision_p, save="none", params=("exponent_bits", "mantissa_bits"))
def reduce_precision(g, saved, **params):
    """x rounded to fewer exponent/mantissa bits.  Local gradient: 1, the gradient rounded
    the same way (JAX's rule)."""
    return (P.reduce_precision_p.bind(g, **params),)


convert_element_type.defkinks(smooth=True)


reduce_precision.defcases(
    lambda rng, dtype: [
        case(
            P.reduce_precision_p,
            lambda x: lax.reduce_precision(x, exponent_bits=5, mantissa_bits=10),
            normal(rng, (2, 3), dtype),
            numeric=False,
        )
    ]
)  # the rounding is not differentiable
reduce_precision.defkinks(smooth=True)


@primitive_gate(P.copy_p, save="none", params=(), complex=True)
def copy(g, saved, **params):
    """A copy of x.  Local gradient: 1."""
    return (g,)


copy.defcases(unary_cases(P.copy_p, lambda x: P.copy_p.bind(x), complex_make=_cplane))
copy.defkinks(smooth=True)
copy.defkinks(special_unary(P.copy_p, lambda x: P.copy_p.bind(x)))
