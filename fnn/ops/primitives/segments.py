"""Gates of the scatters that combine what they write to one place: scatter-max, scatter-min
and scatter-mul (x.at[i].max / min / multiply; jax.ops.segment_max / min / prod: softmax over
a node's neighbours in graph attention, segment pooling).

scatter-max and scatter-min route g as JAX's rule does (jax/_src/lax/slicing.py,
_scatter_extremal_jvp, transposed here): each update that wins its place gets g there, the
operand keeps g where it kept its value, and ties (several updates, or updates and the
operand, equal to the result) share g evenly. scatter-mul sends the operand g times the
product of its updates and, for unique indices, each update g times the operand (JAX's rule).
With repeated indices (segment_prod) JAX has no gradient for the updates; fnn gives the exact
one, g times the product of the other factors at that place, computed without dividing by a
zero, and checks it against central differences. All three take complex values as JAX does
(max and min in JAX's lexicographic order of complex numbers: real part, then imaginary).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from fnn.autodiff.case_values import cdistinct, cnormal, normal, uniform
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.primitive_cases import case
from fnn.ops.primitives.indexing import (
    _SCATTER_PARAMS,
    _gather_dnums_of,
    _read_back,
    _slice_sizes,
    scatter_row_cases,
)


def _extremal(g, saved, dimension_numbers, mode, needs):
    """The transpose of JAX's JVP of scatter-max/min: JAX's coefficients, computed from the
    primal values exactly as there, applied to g in reverse."""
    (x, indices, u), out = saved
    dn = dimension_numbers
    gdn, sizes = _gather_dnums_of(dn), _slice_sizes(x.shape, u.shape, dn)
    read = lambda a: lax.gather(a, indices, gdn, sizes)  # (JAX's: default mode and fill)
    count = lambda a: read(lax.scatter_add(lax.full_like(x, 0), indices, a, dn))
    target = read(out)
    successful, retained = lax.eq(u, target), lax.eq(read(x), target)
    one, zero = lax.full_like(u, 1), lax.full_like(u, 0)
    num_updates = count(lax.select(successful, one, zero))
    num_refs = count(one)
    first = lax.div(one, lax.add(num_updates, one))
    updates_coef = lax.select(
        successful, lax.select(retained, first, lax.div(one, num_updates)), zero
    )
    operand_coef = lax.div(lax.add(lax.neg(one), lax.select(retained, first, zero)), num_refs)
    # the tangent was scatter_add(dx, indices, read(dx) * operand_coef + du * updates_coef)
    g_read = _read_back(g, indices, u.shape, dn, mode)
    du = lax.mul(g_read, updates_coef) if needs[2] else None
    dx = None
    if needs[0]:
        dx = lax.add(
            g, lax.scatter_add(lax.full_like(g, 0), indices, lax.mul(g_read, operand_coef), dn)
        )
    return dx, None, du


@primitive_gate(P.scatter_max_p, save="both", params=_SCATTER_PARAMS, complex=True)
def scatter_max(
    g, saved, *, dimension_numbers, indices_are_sorted, unique_indices, mode, needs, **params
):
    """x with max(x, update) written at run-time positions (.at[].max, segment_max).
    Local gradients: 1 to whichever of the operand and the updates written to a place holds
    the maximum there; n tied maxima get 1/n each (JAX's rule)."""
    return _extremal(g, saved, dimension_numbers, mode, needs)


@primitive_gate(P.scatter_min_p, save="both", params=_SCATTER_PARAMS, complex=True)
def scatter_min(
    g, saved, *, dimension_numbers, indices_are_sorted, unique_indices, mode, needs, **params
):
    """x with min(x, update) written at run-time positions (.at[].min, segment_min).
    Local gradients: 1 to the minimum at each place; n tied minima get 1/n each."""
    return _extremal(g, saved, dimension_numbers, mode, needs)


@primitive_gate(P.scatter_mul_p, params=_SCATTER_PARAMS, complex=True)
def scatter_mul(
    g, inputs, *, dimension_numbers, indices_are_sorted, unique_indices, mode, needs, **params
):
    """x times the updates written at run-time positions (.at[].multiply, segment_prod).
    Local gradients: for x, the product of the updates at its place (JAX's rule: g scattered
    by multiplying); for an update, x times the other updates at its place: g times x read
    back for unique indices (JAX's rule), else, as JAX has none, the product of the other
    factors without division by zero (zeros counted at each place)."""
    x, indices, u = inputs
    dn = dimension_numbers
    dx = du = None
    if needs[0]:
        dx = lax.scatter_mul(
            g,
            indices,
            u,
            dn,
            indices_are_sorted=indices_are_sorted,
            unique_indices=unique_indices,
            mode=mode,
        )
    if needs[2] and unique_indices:
        du = _read_back(lax.mul(g, x), indices, u.shape, dn, mode)
    elif needs[2]:
        is_zero = lax.eq(u, lax.full_like(u, 0))
        nonzero = lax.select(is_zero, lax.full_like(u, 1), u)
        # at each place: how many of its updates are 0, and g x (product of the others)
        zeros = lax.scatter_add(
            lax.full_like(x, 0), indices, lax.convert_element_type(is_zero, x.dtype), dn, mode=mode
        )
        others = lax.mul(g, lax.scatter_mul(x, indices, nonzero, dn, mode=mode))
        n_zeros = _read_back(zeros, indices, u.shape, dn, mode)
        product = _read_back(others, indices, u.shape, dn, mode)
        none_, one_ = lax.full_like(u, 0), lax.full_like(u, 1)
        du = lax.select(
            is_zero,
            lax.select(lax.eq(n_zeros, one_), product, none_),
            lax.select(lax.eq(n_zeros, none_), lax.div(product, u), none_),
        )
    return dx, None, du


def _extremal_cases(primitive, method, segment):
    def cases(rng, dtype):
        x, fn, rows = scatter_row_cases(primitive, method, rng, dtype)
        ids = np.asarray([0, 2, 2, 0, 3, 1])
        elements = (np.array([1, 3, 1]), np.array([0, 2, 0]))
        by_segment = lambda d: segment(d, ids, num_segments=4)
        return rows + [
            case(primitive, fn, x, elements, normal(rng, (3,), dtype), label="elements"),
            case(
                primitive,
                by_segment,
                normal(rng, (6, 2), dtype),
                fixed=(0,),
                label="segments (the operand, +-inf, held fixed)",
            ),
            case(
                primitive,
                fn,
                cdistinct(rng, (5, 3), dtype),
                np.array([0, 2, 2]),
                cdistinct(rng, (3, 3), dtype),
                label="complex, a repeat",
            ),
        ]

    return cases


def _extremal_kinks(primitive, method):
    def kinks(dtype):
        # ties among updates and with the operand, NaN, infinities, dropped and clipped indices
        x = np.asarray([1.0, 2.0, np.nan, 0.0, -np.inf, 3.0], dtype)
        u = np.asarray([2.0, 2.0, 1.0, 0.0, 5.0, np.nan, 3.0, -np.inf, 7.0], dtype)
        i = np.asarray([1, 1, 0, 3, 2, 4, 5, 4, 9])
        return [
            case(
                primitive,
                lambda x, u: getattr(x.at[i], method)(u),
                x,
                u,
                label="ties, NaN, inf, dropped",
            ),
            case(
                primitive,
                lambda x, u: getattr(x.at[i], method)(u, mode="clip"),
                x,
                u,
                label="clipped",
            ),
        ]

    return kinks


scatter_max.defcases(_extremal_cases(P.scatter_max_p, "max", jax.ops.segment_max))
scatter_max.defkinks(_extremal_kinks(P.scatter_max_p, "max"))
scatter_min.defcases(_extremal_cases(P.scatter_min_p, "min", jax.ops.segment_min))
scatter_min.defkinks(_extremal_kinks(P.scatter_min_p, "min"))


def _multiply(x, i, u):
    return x.at[i].multiply(u)


def _multiply_unique(x, i, u):
    return x.at[i].multiply(u, unique_indices=True)


@scatter_mul.defcases
def _scatter_mul_cases(rng, dtype):
    return [*_scatter_mul_real_cases(rng, dtype), *_scatter_mul_complex_cases(rng, dtype)]


def _scatter_mul_real_cases(rng, dtype):
    """Real factors in [0.5, 1.5]: unique rows and elements, repeated rows, segments (with
    zeros, which the rule must not divide by), the operand alone."""
    x = uniform(rng, (5, 3), dtype, 0.5, 1.5)
    u = lambda *s: uniform(rng, s, dtype, 0.5, 1.5)
    with_zeros = u(6, 2)
    with_zeros[[1, 2, 4]] = 0.0  # segment 0: one zero; segment 2: two zeros
    ids = np.asarray([0, 0, 2, 1, 2, 3])
    return [
        case(P.scatter_mul_p, _multiply_unique, x, np.array([4, 1]), u(2, 3), label="rows, unique"),
        case(
            P.scatter_mul_p,
            _multiply_unique,
            x,
            (np.array([1, 3]), np.array([0, 2])),
            u(2),
            label="elements, unique",
        ),
        # repeated indices: JAX has no gradient for the updates, central differences judge
        case(
            P.scatter_mul_p,
            _multiply,
            x,
            np.array([0, 2, 2]),
            u(3, 3),
            reference=False,
            label="rows, a repeat",
        ),
        case(
            P.scatter_mul_p,
            lambda d: jax.ops.segment_prod(d, ids, num_segments=4),
            with_zeros,
            fixed=(0,),
            reference=False,
            label="segment_prod with zeros",
        ),
        case(
            P.scatter_mul_p,
            lambda x: x.at[np.array([0, 2, 2])].multiply(_c(x, 2.0)),
            x,
            fixed=(2,),
            label="x only, repeated",
        ),
    ]


def _scatter_mul_complex_cases(rng, dtype):
    """Complex factors: unique rows, and repeated rows (no reference: JAX has no gradient for
    the updates there)."""
    return [
        case(
            P.scatter_mul_p,
            _multiply_unique,
            cnormal(rng, (5, 3), dtype),
            np.array([4, 1]),
            cnormal(rng, (2, 3), dtype),
            label="complex, rows, unique",
        ),
        case(
            P.scatter_mul_p,
            _multiply,
            cnormal(rng, (5, 3), dtype),
            np.array([0, 2, 2]),
            cnormal(rng, (3, 3), dtype),
            reference=False,
            label="complex, a repeat",
        ),
    ]


@scatter_mul.defkinks
def _scatter_mul_kinks(dtype):
    x = np.asarray([0.0, 2.0, np.nan, np.inf, -1.0], dtype)
    u = np.asarray([0.0, np.inf, 3.0, 0.0, np.nan], dtype)
    return [
        case(
            P.scatter_mul_p,
            lambda x, u: x.at[np.array([1, 0, 2, 3, 4])].multiply(u, unique_indices=True),
            x,
            u,
            label="zeros, inf, NaN",
        ),
        case(
            P.scatter_mul_p,
            lambda x, u: x.at[np.array([1, 0, 7, 3, 4])].multiply(u, unique_indices=True),
            x,
            u,
            label="one dropped",
        ),
    ]


def _c(x, value):
    return np.asarray(value, dtype=jnp.result_type(x))
