"""Activation gates, elementwise (maxout excepted). The lecture's patterns:

    relu routes g where x > 0 and kills it elsewhere;  maxout routes g to each group's max.

(sigmoid and tanh are JAX's own, fnn.ops.aliases, differentiated by the rules of lax.logistic
and lax.tanh: s (1 - s) and 1 - t**2, from the output alone.)

Conventions: `g` is the upstream gradient (shape of the output), `saved` what the forward kept;
each gradient has its input's shape and dtype. Constants are Python floats, so float32 stays
float32 even with jax_enable_x64. Kinks follow JAX (each forward is the jax.nn function, and
its VJP gives what JAX's own gradient gives): at exactly x == 0, relu's gradient is 0,
leaky_relu's 1, elu's alpha; relu6's 0 at 0 and 6; maxout splits a tie evenly among its group's maxima.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn.autodiff.case_values import away_from, distinct, normal, special_points, unary_gate_cases
from fnn.autodiff.gate import Case, defgate
from fnn.errors import GateError, describe
from fnn.ops._dtypes import inexact


def _wide(rng, shape, dtype):
    return normal(rng, shape, dtype, scale=3.0)


def _off_kink(rng, shape, dtype):
    return away_from(rng, shape, dtype, gap=0.1)


# ---- rectifiers: route g by the sign of x ----------------------------------------------------
@defgate
def relu(x):
    """max(x, 0) (jax.nn.relu).

    Local gradient: 1 where x > 0, else 0 (also 0 at exactly x == 0, the value of jax.nn.relu's own
    rule). relu(NaN) is NaN, its gradient 0.

    Shapes: elementwise. The relu gate routes g to the positive entries only.

    Args:
        x: the input (any shape).

    Returns:
        relu(x), shaped like x.
    """
    return jax.nn.relu(x), x > 0


@relu.defvjp
def relu_vjp(g, positive):
    return (jnp.where(positive, g, 0.0),)


relu.defcases(unary_gate_cases(_off_kink))
relu.defkinks(special_points())


@defgate
def relu6(x):
    """min(max(x, 0), 6) (jax.nn.relu6).

    Local gradient: 1 where 0 < x < 6, else 0 (also 0 at exactly 0 and 6, the value of
    jax.nn.relu6's own rule). Shapes: elementwise.

    jax.nn.relu6 (and hard_sigmoid, hard_silu) in a function differentiated by fnn.grad give
    the same values through jax.nn.relu6's own custom rule (fnn.autodiff.structural.custom).

    Args:
        x: the input (any shape).

    Returns:
        relu6(x), shaped like x.
    """
    return jax.nn.relu6(x), (x > 0) & (x < 6)


@relu6.defvjp
def relu6_vjp(g, inside):
    return (jnp.where(inside, g, 0.0),)


def _off_relu6_kinks(rng, shape, dtype):
    """Normal samples around 3 (scale 4), at least 0.1 away from the kinks at 0 and 6."""
    x = 3.0 + normal(rng, shape, "float64", scale=4.0)
    for p in (0.0, 6.0):
        x = np.where(np.abs(x - p) < 0.1, p + 0.1 * np.sign(x - p + 1e-12), x)
    return np.asarray(x).astype(dtype)


relu6.defcases(unary_gate_cases(_off_relu6_kinks))
relu6.defkinks(special_points())


@defgate
def leaky_relu(x, *, alpha=0.01):
    """x where x >= 0, else alpha * x (jax.nn.leaky_relu with negative_slope=alpha).

    Local gradient: 1 where x >= 0, else alpha.

    At exactly x == 0 the gradient is 1, as JAX's gradient of jax.nn.leaky_relu gives.
    Shapes: elementwise; `alpha` is a Python float.

    Args:
        x: the input (any shape).
        alpha: the slope of the negative side.

    Returns:
        leaky_relu(x), shaped like x.
    """
    return jax.nn.leaky_relu(x, negative_slope=alpha), x >= 0


@leaky_relu.defvjp
def leaky_relu_vjp(g, right, *, alpha=0.01):
    return (jnp.where(right, g, alpha * g),)


leaky_relu.defcases(unary_gate_cases(_off_kink, kwargs=({}, {"alpha": 0.2})))
leaky_relu.defkinks(special_points(kwargs=({}, {"alpha": 0.2})))


@defgate
def elu(x, *, alpha=1.0):
    """x where x > 0, else alpha (e**x - 1) (jax.nn.elu).

    Local gradient: 1 where x > 0, else alpha e**x.

    At exactly x == 0 the gradient is alpha (the left limit; continuous when alpha == 1), as
    JAX's gradient of jax.nn.elu gives. e**x is taken of min(x, 0), so large positive x never
    overflows. Shapes: elementwise.

    Args:
        x: the input (any shape).
        alpha: the scale of the negative side.

    Returns:
        elu(x), shaped like x.
    """
    out = jax.nn.elu(x, alpha=alpha)
    return out, (x, out)


@elu.defvjp
def elu_vjp(g, saved, *, alpha=1.0):
    x, out = saved  # for x <= 0, alpha e**x = out + alpha: no second exponential
    return (jnp.where(x > 0, g, g * (out + alpha)),)


elu.defcases(unary_gate_cases(_off_kink, kwargs=({}, {"alpha": 0.5})))
elu.defkinks(special_points(kwargs=({}, {"alpha": 0.5})))


# ---- maxout: the max gate over groups --------------------------------------------------------
def _maxout_axis(x, pieces, axis, name="maxout"):
    if jnp.ndim(x) == 0:
        raise GateError(f"gate '{name}' needs an array with an axis to group, got {describe(x)}")
    if not isinstance(pieces, int) or pieces < 1:
        raise GateError(f"gate '{name}': pieces must be a positive int, got {pieces!r}")
    if not -x.ndim <= axis < x.ndim:
        raise GateError(f"gate '{name}': axis={axis} is out of range for {describe(x)}")
    ax = axis % x.ndim
    if x.shape[ax] % pieces:
        raise GateError(
            f"gate '{name}': axis {axis} of {describe(x)} has size {x.shape[ax]}, "
            f"not a multiple of pieces={pieces}"
        )
    return ax


def _grouped(x, pieces, ax):
    """x with axis `ax` (size k*pieces) split into (k, pieces): group i = entries i*pieces.. ."""
    return x.reshape(x.shape[:ax] + (x.shape[ax] // pieces, pieces) + x.shape[ax + 1 :])


@defgate
def maxout(x, *, pieces, axis=-1):
    """Maxout (Goodfellow et al.): the max over groups of `pieces` consecutive entries of `axis`.

    Shapes: x has size k*pieces along `axis`; the output has size k there (other axes kept):
    out[..., i, ...] = max(x[..., i*pieces : (i+1)*pieces, ...]) (jnp.max over the group). The
    local gradient is 1 for the entry that is its group's max and 0 for the others: the max
    gate routes g. At a tie the gradient is split evenly among the group's maxima, as JAX
    does for jnp.max.

    Args:
        x: the input, of size k*pieces along `axis`.
        pieces: the size of each group.
        axis: the axis grouped.

    Returns:
        The input with size k along `axis`.
    """
    ax = _maxout_axis(x, pieces, axis)
    xg = _grouped(x, pieces, ax)
    out = jnp.max(xg, axis=ax + 1)
    return out, (xg, out)


@maxout.defvjp
def maxout_vjp(g, saved, *, pieces, axis=-1):
    xg, out = saved
    ax = axis % (xg.ndim - 1)
    is_max = (xg == jnp.expand_dims(out, ax + 1)).astype(g.dtype)
    dx = is_max * jnp.expand_dims(g / jnp.sum(is_max, axis=ax + 1), ax + 1)
    return (dx.reshape(xg.shape[:ax] + (-1,) + xg.shape[ax + 2 :]),)


@maxout.defcases
def _maxout_cases(rng, dtype):
    return [
        Case((distinct(rng, shape, dtype),), {"pieces": p, "axis": a}, label=f"{shape},{p},{a}")
        for shape, p, a in [
            ((6,), 2, -1),
            ((3, 8), 4, -1),
            ((4, 6, 2), 3, 1),
            ((6, 5), 3, 0),
            ((2, 3), 1, -1),
            ((2, 3), 3, 1),
        ]
    ]


@maxout.defkinks
def _maxout_kinks(dtype):
    x = np.asarray(
        [[1.0, 1.0, 0.0, 2.0, 3.0, 3.0], [np.nan, 1.0, -np.inf, -np.inf, 2.0, np.inf]], dtype
    )
    return [Case((x,), {"pieces": p}, label=f"ties, NaN, inf, pieces={p}") for p in (2, 3)]


# ---- smooth rectifiers -----------------------------------------------------------------------
@defgate
def softplus(x):
    """log(1 + e**x), computed stably as logaddexp(x, 0).  Local gradient: sigmoid(x).

    Shapes: elementwise. Finite values and gradients for any finite x (e.g. |x| = 1e4, float32).

    Args:
        x: the input (any shape).

    Returns:
        softplus(x), shaped like x.
    """
    x = inexact(x)
    return jnp.logaddexp(x, 0.0), x


@softplus.defvjp
def softplus_vjp(g, x):
    return (g * jax.nn.sigmoid(x),)


softplus.defcases(unary_gate_cases(_wide))
softplus.defkinks(special_points())

_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_C = 0.044715


@defgate
def gelu(x, *, approximate=False):
    """GELU: x Phi(x), Phi the standard normal CDF.  Shapes: elementwise.

    Exact (default): x erfc(-x / sqrt 2) / 2, local gradient Phi(x) + x phi(x) with
    phi(x) = e**(-x**2/2) / sqrt(2 pi).
    approximate=True: x (1 + tanh(u)) / 2 with u = sqrt(2/pi) (x + 0.044715 x**3), computed as
    x s with s = sigmoid(2u) (the same value, without the cancellation of 1 + tanh(u) in the left
    tail); local gradient s + 2 x s (1 - s) sqrt(2/pi) (1 + 3 * 0.044715 x**2).

    Args:
        x: the input (any shape).
        approximate: use the tanh approximation.

    Returns:
        gelu(x), shaped like x.
    """
    x = inexact(x)
    if approximate:
        s = jax.nn.sigmoid(2.0 * _SQRT_2_OVER_PI * (x + _GELU_C * x * x * x))
        return x * s, (x, s)
    # Phi(x) = erfc(-x / sqrt 2) / 2, accurate in the left tail where 1 + erf(x) cancels
    return x * (0.5 * lax.erfc(-x / _SQRT_2)), (x, None)


@gelu.defvjp
def gelu_vjp(g, saved, *, approximate=False):
    x, s = saved
    if approximate:
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_C * x * x)
        return (g * (s + 2.0 * x * s * (1.0 - s) * du),)
    # Phi again, from x (the forward keeps only x): its argument is rounded otherwise than the
    # forward's (x times -1/sqrt 2, not -x over sqrt 2), so XLA does not merge the two erfc:
    # merged, it keeps the pieces of erfc that both use (three arrays of x's size) in memory
    # between the forward and the backward instead of computing erfc once in each
    s = 0.5 * lax.erfc(x * (-1.0 / _SQRT_2))
    return (g * (s + x * _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)),)


gelu.defcases(unary_gate_cases(_wide, kwargs=({}, {"approximate": True})))
gelu.defkinks(special_points(kwargs=({}, {"approximate": True})))


@defgate
def silu(x):
    """SiLU / swish: x sigmoid(x).  Local gradient: s (1 + x (1 - s)), s = sigmoid(x).

    Shapes: elementwise. Finite for any finite x.

    Args:
        x: the input (any shape).

    Returns:
        silu(x), shaped like x.
    """
    s = jax.nn.sigmoid(x)
    return x * s, (x, s)


@silu.defvjp
def silu_vjp(g, saved):
    x, s = saved
    return (g * s * (1.0 + x * (1.0 - s)),)


silu.defcases(unary_gate_cases(_wide))
silu.defkinks(special_points())
