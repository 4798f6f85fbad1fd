"""Gates of JAX's special functions where JAX differentiates them: the scaled Bessel functions
i0e and i1e (von Mises likelihoods), the regularized incomplete gamma functions igamma and
igammac, polygamma, the regularized incomplete beta function (betainc), and random_gamma, the
sampler behind jax.random.gamma, beta and dirichlet, whose learned shape gets JAX's implicit
reparameterisation gradient. (lgamma, digamma, erf, erfc and erf_inv are in elementwise.py.)

Each rule is JAX's own (jax/_src/lax/special.py, jax/_src/random/core.py), written again with
lax, in the same operations, so it gives JAX's values at every point, NaNs and infinities
included. Where JAX has no derivative, fnn refuses too, naming the argument: betainc in a and
b, polygamma in m (lax.zeta has none either: jax.scipy.special.zeta is a custom_jvp function,
differentiated by its own rule). d/da of igamma is the primitive igamma_grad_a, which JAX
cannot differentiate again, and random_gamma's derivative is a while loop (reverse mode cannot
go through it): their cases say so (Case.second_order=False).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from fnn.autodiff.case_values import SPECIAL, normal, uniform
from fnn.autodiff.gate import primitive_gate, unbroadcast
from fnn.autodiff.primitive_cases import case, special_binary, special_unary
from fnn.errors import JAX_REFUSES_TOO, GateError, describe


def _c(x, value):
    return np.asarray(value, dtype=jnp.result_type(x))


def _refuse(rule, name, x, why):
    """The error for a gradient JAX does not define either."""
    return GateError(
        f"rule 'lax.{rule}': no gradient with respect to {name} ({describe(x)}): "
        f"{why} {JAX_REFUSES_TOO}. Hold {name} fixed (a constant, or "
        "lax.stop_gradient) to differentiate the other inputs."
    )


# ---- scaled modified Bessel functions -----------------------------------------------------------
@primitive_gate(P.bessel_i0e_p, save="both", params=())
def bessel_i0e(g, saved, **params):
    """i0e(x) = exp(-|x|) I0(x).  Local gradient: i1e(x) - sign(x) i0e(x) (I0' = I1;
    Abramowitz & Stegun 9.6.27), JAX's rule."""
    (x,), y = saved
    return (lax.mul(g, lax.sub(lax.bessel_i1e(x), lax.mul(lax.sign(x), y))),)


bessel_i0e.defcases(
    lambda rng, dtype: [
        case(P.bessel_i0e_p, lax.bessel_i0e, normal(rng, s, dtype, scale=3.0))
        for s in ((), (3,), (2, 3))
    ]
)
bessel_i0e.defkinks(special_unary(P.bessel_i0e_p, lax.bessel_i0e))


@primitive_gate(P.bessel_i1e_p, save="both", params=())
def bessel_i1e(g, saved, **params):
    """i1e(x) = exp(-|x|) I1(x).  Local gradient: i0e(x) - i1e(x) (sign(x) + 1/x) (I1' = I0 -
    I1/x; A&S 9.6.26), and 1/2 where |x| <= eps, as JAX's rule writes it."""
    (x,), y = saved
    eps = jnp.finfo(jnp.result_type(x)).eps
    not_tiny = lax.gt(lax.abs(x), lax.full_like(x, eps))
    safe_x = lax.select(not_tiny, x, lax.full_like(x, eps))
    dy_dx = lax.sub(
        lax.bessel_i0e(safe_x), lax.mul(y, lax.add(lax.sign(safe_x), lax.reciprocal(safe_x)))
    )
    dy_dx = lax.select(not_tiny, dy_dx, lax.full_like(x, 0.5))
    return (lax.mul(g, dy_dx),)


bessel_i1e.defcases(
    lambda rng, dtype: [
        case(P.bessel_i1e_p, lax.bessel_i1e, normal(rng, s, dtype, scale=3.0))
        for s in ((), (3,), (2, 3))
    ]
)
# about eps, where JAX's rule switches to its limit 1/2
bessel_i1e.defkinks(
    special_unary(P.bessel_i1e_p, lax.bessel_i1e, SPECIAL + (1e-300, -1e-300, 1e-7, 2.2e-16))
)


# ---- incomplete gamma ---------------------------------------------------------------------------
def _igamma_dx(g, a, x):
    """g times d/dx P(a, x) = x**(a-1) exp(-x) / Gamma(a), as JAX writes it (in logs)."""
    return lax.mul(
        g,
        lax.exp(
            lax.sub(lax.add(lax.neg(x), lax.mul(lax.sub(a, _c(a, 1)), lax.log(x))), lax.lgamma(a))
        ),
    )


def _igamma_parts(g, inputs, needs):
    """(d/da, d/dx) of P(a, x) times g, each summed back to its input's shape."""
    a, x = inputs
    a_b, x_b = jnp.broadcast_to(a, g.shape), jnp.broadcast_to(x, g.shape)
    da = unbroadcast(lax.mul(g, lax.igamma_grad_a(a_b, x_b)), a) if needs[0] else None
    dx = unbroadcast(_igamma_dx(g, a_b, x_b), x) if needs[1] else None
    return da, dx


@primitive_gate(P.igamma_p, params=())
def igamma(g, inputs, *, needs, **params):
    """P(a, x), the regularized lower incomplete gamma function.  Local gradients:
    d/da = igamma_grad_a(a, x) (no closed form: JAX's series and continued fraction, after
    XLA's math.cc), d/dx = x**(a-1) exp(-x) / Gamma(a) (DLMF 8.8.13)."""
    return _igamma_parts(g, inputs, needs)


@primitive_gate(P.igammac_p, params=())
def igammac(g, inputs, *, needs, **params):
    """Q(a, x) = 1 - P(a, x).  Local gradients: minus igamma's (JAX's rule)."""
    da, dx = _igamma_parts(g, inputs, needs)
    return (None if da is None else lax.neg(da)), (None if dx is None else lax.neg(dx))


def _igamma_cases(primitive, fn):
    def cases(rng, dtype):
        a = lambda s: uniform(rng, s, dtype, 0.5, 3.0)
        x = lambda s: uniform(rng, s, dtype, 0.2, 4.0)
        return [
            case(primitive, fn, a((3,)), x((3,)), fixed=(0,), label="d/dx (a fixed)"),
            case(primitive, fn, a((2, 3)), x((2, 3)), second_order=False),
            case(primitive, fn, a(()), x(()), second_order=False),
            case(primitive, lambda x: fn(_c(x, 1.5), x), x((4,)), fixed=(0,), label="literal a"),
            case(
                primitive,
                fn,
                np.asarray([0.5, 2.0, 8.0], dtype),
                np.asarray([3.0, 3.0, 9.5], dtype),
                second_order=False,
                label="x > 1 and x > a: the continued fraction",
            ),
        ]

    return cases


igamma.defcases(_igamma_cases(P.igamma_p, lax.igamma))
igammac.defcases(_igamma_cases(P.igammac_p, lax.igammac))
igamma.defkinks(special_binary(P.igamma_p, lax.igamma))
igammac.defkinks(special_binary(P.igammac_p, lax.igammac))


# ---- polygamma and the incomplete beta function -------------------------------------------------
@primitive_gate(P.polygamma_p, params=())
def polygamma(g, inputs, *, needs, **params):
    """psi^(m)(x), the m-th derivative of digamma.  Local gradient: d/dx = psi^(m+1)(x);
    none in m (an integer order: JAX refuses it)."""
    m, x = inputs
    if needs[0]:
        raise _refuse("polygamma", "m", m, "the order m is an integer")
    m_b, x_b = jnp.broadcast_to(m, g.shape), jnp.broadcast_to(x, g.shape)
    return None, unbroadcast(lax.mul(g, lax.polygamma(lax.add(m_b, _c(m, 1)), x_b)), x)


polygamma.defcases(
    lambda rng, dtype: [
        case(
            P.polygamma_p,
            lax.polygamma,
            np.asarray([1.0, 2.0, 3.0], dtype),
            uniform(rng, (3,), dtype, 0.5, 3.0),
            fixed=(0,),
        ),
        case(
            P.polygamma_p,
            lambda x: lax.polygamma(_c(x, 0.0), x),
            uniform(rng, (2, 3), dtype, 0.5, 3.0),
            fixed=(0,),
            label="m = 0 (digamma)",
        ),
    ]
)
polygamma.defkinks(
    lambda dtype: [
        case(
            P.polygamma_p,
            lambda x: lax.polygamma(_c(x, 1.0), x),
            np.asarray(SPECIAL, dtype),
            fixed=(0,),
            label="m = 1 at special points",
        )
    ]
)


@primitive_gate(P.regularized_incomplete_beta_p, params=())
def betainc(g, inputs, *, needs, **params):
    """I_x(a, b), the regularized incomplete beta function.  Local gradient: d/dx =
    x**(a-1) (1-x)**(b-1) / B(a, b) (DLMF 8.17.2), computed in logs as JAX does; none in a
    and b (JAX refuses them)."""
    a, b, x = inputs
    for i, name in ((0, "a"), (1, "b")):
        if needs[i]:
            raise _refuse(
                "regularized_incomplete_beta",
                name,
                inputs[i],
                "JAX defines betainc's gradient in x alone",
            )
    lbeta = lax.sub(lax.add(lax.lgamma(a), lax.lgamma(b)), lax.lgamma(lax.add(a, b)))
    partial_x = lax.exp(
        lax.sub(
            lax.add(
                lax.mul(lax.sub(b, _c(b, 1)), lax.log1p(lax.neg(x))),
                lax.mul(lax.sub(a, _c(a, 1)), lax.log(x)),
            ),
            lbeta,
        )
    )
    return None, None, unbroadcast(lax.mul(partial_x, g), x)


betainc.defcases(
    lambda rng, dtype: [
        case(
            P.regularized_incomplete_beta_p,
            lax.betainc,
            uniform(rng, (3,), dtype, 0.5, 4.0),
            uniform(rng, (3,), dtype, 0.5, 4.0),
            uniform(rng, (3,), dtype, 0.1, 0.9),
            fixed=(0, 1),
        ),
        case(
            P.regularized_incomplete_beta_p,
            lambda x: lax.betainc(_c(x, 2.0), _c(x, 0.5), x),
            uniform(rng, (2, 3), dtype, 0.1, 0.9),
            fixed=(0, 1),
            label="scalar a, b",
        ),
    ]
)
betainc.defkinks(
    lambda dtype: [
        case(
            P.regularized_incomplete_beta_p,
            lambda x: lax.betainc(_c(x, 2.0), _c(x, 0.5), x),
            np.asarray(SPECIAL, dtype),
            fixed=(0, 1),
            label="x at special points",
        )
    ]
)


# ---- random_gamma: the implicit reparameterisation gradient -------------------------------------
@primitive_gate(P.random_gamma_p, save="both", params=("log_space",))
def random_gamma(g, saved, *, log_space, **params):
    """z ~ Gamma(a, 1) drawn from a key (jax.random.gamma, loggamma, beta, dirichlet).
    Local gradient in the shape a: the implicit reparameterisation gradient dz/da =
    -(dF(z; a)/da) / p(z; a), F the CDF (Figurnov, Mohamed & Mnih 2018), which JAX computes
    with lax.random_gamma_grad; for log_space (z = log of the sample s) it is that of s over s,
    s = exp(z) read as the smallest normal float where it underflows to 0. None for the key."""
    (key, a), z = saved
    samples = z
    if log_space:
        samples = lax.exp(z)
        tiny = lax.full_like(samples, jnp.finfo(jnp.result_type(samples)).tiny)
        samples = lax.select(lax.eq(samples, lax.full_like(samples, 0)), tiny, samples)
        grads = lax.div(lax.random_gamma_grad(a, samples), samples)
    else:
        grads = lax.random_gamma_grad(a, samples)
    return None, lax.mul(g, grads)


def _gamma_case(fn, a, **kw):
    return case(P.random_gamma_p, fn, a, numeric=False, second_order=False, **kw)


def _gamma(a, shape=None):
    return jax.random.gamma(jax.random.PRNGKey(0), a, shape)


def _loggamma(a):
    return jax.random.loggamma(jax.random.PRNGKey(0), a)


@random_gamma.defcases
def _random_gamma_cases(rng, dtype):
    # the sampler's own derivative (rejection sampling) is not the implicit one: no central
    # differences, JAX's values alone
    a = lambda s: uniform(rng, s, dtype, 0.3, 4.0)
    return [
        _gamma_case(_gamma, a((3,))),
        _gamma_case(_loggamma, a((3,)), label="log space"),
        _gamma_case(lambda a: _gamma(a, (2, 3)), a((3,)), label="a broadcast to the shape"),
    ]


random_gamma.defkinks(
    lambda dtype: [
        # tiny shapes (samples underflow to 0; in log space read as the smallest float), 1, huge,
        # and out of the domain
        case(
            P.random_gamma_p,
            _gamma,
            np.asarray([1e-4, 0.5, 1.0, 1e4, 0.0, -1.0, np.inf, np.nan], dtype),
            label="special shapes",
            second_order=False,
        ),
        case(
            P.random_gamma_p,
            _loggamma,
            np.asarray([1e-30, 1e-4, 1.0, 1e4, 0.0, np.nan], dtype),
            label="log space, special shapes",
            second_order=False,
        ),
    ]
)
