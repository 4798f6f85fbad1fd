"""Gates of JAX's complex-number primitives: real, imag, complex, conj.

JAX's convention for complex values (every rule declared `complex=True` follows it): a VJP is
the transpose of the derivative, a real-linear map, under the pairing <a, b> = Re(sum(a * b)),
with no conjugation. So a holomorphic f sends back g * f'(z) (the real rules' formulas as they
are), and the maps that are not complex-linear send back

    real(z)        complex(g, 0)         Re(g t) = g Re(t)
    imag(z)        complex(0, -g)        g Im(t) = Re(-i g t)
    complex(x, y)  real(g), -imag(g)     Re(g (s + i t)) = Re(g) s - Im(g) t
    conj(z)        conj(g)               Re(g conj(t)) = Re(conj(g) t)

which makes the gradient of a real loss L(z), z = x + iy, dL/dx - i dL/dy: the conjugate of the
direction of steepest ascent (JAX's autodiff cookbook, "Complex numbers and differentiation").
"""

import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from fnn.autodiff.case_values import cnormal, normal
from fnn.autodiff.gate import primitive_gate, unbroadcast
from fnn.autodiff.primitive_cases import case

SHAPES = ((), (3,), (2, 3))


def _zeros(x):
    return lax.full_like(x, 0)


@primitive_gate(P.real_p, save="none", params=(), complex=True)
def real(g, saved, **params):
    """Re(z).  Local gradient (JAX's convention): complex(g, 0)."""
    return (lax.complex(g, _zeros(g)),)


real.defcases(lambda rng, dtype: [case(P.real_p, lax.real, cnormal(rng, s, dtype)) for s in SHAPES])
real.defkinks(smooth=True)


@primitive_gate(P.imag_p, save="none", params=(), complex=True)
def imag(g, saved, **params):
    """Im(z).  Local gradient (JAX's convention): complex(0, -g)."""
    return (lax.complex(_zeros(g), lax.neg(g)),)


imag.defcases(lambda rng, dtype: [case(P.imag_p, lax.imag, cnormal(rng, s, dtype)) for s in SHAPES])
imag.defkinks(smooth=True)


@primitive_gate(P.complex_p, save="shapes", params=(), complex=True)
def complex(g, shapes, *, needs, **params):  # noqa: A001  (the primitive's name)
    """x + iy.  Local gradients (JAX's convention): Re(g) to x, -Im(g) to y."""
    x, y = shapes
    return (
        unbroadcast(lax.real(g), x) if needs[0] else None,
        unbroadcast(lax.imag(lax.neg(g)), y) if needs[1] else None,
    )


@complex.defcases
def _complex_cases(rng, dtype):
    x, y = normal(rng, (2, 3), dtype), normal(rng, (2, 3), dtype)
    return [
        case(P.complex_p, lax.complex, x, y),
        case(P.complex_p, lax.complex, normal(rng, (), dtype), normal(rng, (), dtype)),
        case(
            P.complex_p,
            lambda x: lax.complex(np.asarray(0.5, x.dtype), x),
            normal(rng, (3,), dtype),
            label="a literal real part",
        ),
    ]


complex.defkinks(smooth=True)


@primitive_gate(P.conj_p, save="none", params=("input_dtype",), complex=True)
def conj(g, saved, *, input_dtype, **params):
    """conj(z) (of a real x: x + 0i).  Local gradient (JAX's convention): conj(g); Re(g) for
    a real input."""
    if np.issubdtype(input_dtype, np.complexfloating):
        return (lax.conj(g),)
    return (lax.real(g),)


conj.defcases(
    lambda rng, dtype: [
        *(case(P.conj_p, lax.conj, cnormal(rng, s, dtype)) for s in SHAPES),
        case(P.conj_p, lax.conj, normal(rng, (2, 3), dtype), label="of a real input"),
    ]
)
conj.defkinks(smooth=True)
