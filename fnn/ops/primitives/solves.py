"""Gates of JAX's linear solves: triangular_solve and tridiagonal_solve (custom_linear_solve,
behind jnp.linalg.solve/inv/slogdet, jax.scipy.linalg.solve, jax.scipy.sparse.linalg.cg, whose
matrix is a function interpreted with the rules in use, is a structural rule of the core:
fnn.autodiff.structural.linear_solve).

A solve Y = A^{-1} B is linear in B and, through the inverse, smooth in A: with Z = A^{-T} Ybar
(one solve with the transposed matrix),

    Bbar = Z,        Abar = -Z Y^T

(Giles 2008, "An extended collection of matrix derivative results": C = A^{-1} B
gives Bbar = A^{-T} Cbar, Abar = -Bbar C^T). A triangular A keeps only its triangle's gradient;
a tridiagonal one its three diagonals'.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from fnn.autodiff.case_values import cnormal, normal
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.primitive_cases import case
from fnn.ops.primitives._matrices import T, mm, tril, triu

# ---- triangular_solve ---------------------------------------------------------------------------
_TRI_PARAMS = ("left_side", "lower", "transpose_a", "conjugate_a", "unit_diagonal")


def _tri_forward(a, b, **params):
    out = P.triangular_solve_p.bind(a, b, **params)
    return out, (a, out)


@primitive_gate(P.triangular_solve_p, forward=_tri_forward, params=_TRI_PARAMS, complex=True)
def triangular_solve(g, saved, *, left_side, lower, transpose_a, conjugate_a, unit_diagonal, needs):
    """Y = op(A)^{-1} B (left_side) or B op(A)^{-1}, A (..., m, m) triangular (only its
    `lower` or upper triangle is read, its diagonal taken as ones with unit_diagonal), op(A) =
    A^T with transpose_a, conj(A) with conjugate_a.  Local gradients (Giles 2008), with Z the
    solve of the upstream g with op(A)^T:  dB = Z;  d op(A) = -Z Y^T (left) or -Y^T Z (right),
    taken back through op (conjugated with conjugate_a: JAX's convention), kept on A's triangle
    (off the diagonal with unit_diagonal). The products are grouped as JAX's rule groups them
    (the cheaper way for the shapes), so a singular A gives JAX's infinities and NaNs."""
    a, y = saved
    flags = dict(
        left_side=left_side, lower=lower, conjugate_a=conjugate_a, unit_diagonal=unit_diagonal
    )
    solve_t = lambda x: lax.linalg.triangular_solve(a, x, transpose_a=not transpose_a, **flags)
    z = solve_t(g) if needs[1] else None
    da = None
    if needs[0]:
        m, n = y.shape[-2:]
        if left_side:  # dY = -op(A)^{-1} op(dA) Y
            d_op = mm(z if z is not None else solve_t(g), T(y)) if m > n else solve_t(mm(g, T(y)))
        else:  # dY = -Y op(dA) op(A)^{-1}
            d_op = mm(T(y), z if z is not None else solve_t(g)) if m < n else solve_t(mm(T(y), g))
        d_op = -(T(d_op) if transpose_a else d_op)
        d_op = jnp.conj(d_op) if conjugate_a and jnp.iscomplexobj(d_op) else d_op
        k = 1 if unit_diagonal else 0
        da = tril(d_op, -k) if lower else triu(d_op, k)
    return da, z


def _triangle(rng, n, dtype, lower=True, batch=()):
    """A well-conditioned triangular matrix (the other triangle random too: never read)."""
    x = 0.4 * rng.standard_normal(batch + (n, n)) + 2.0 * np.eye(n)
    return x.astype(dtype)


@triangular_solve.defcases
def _triangular_solve_cases(rng, dtype):
    return [*_triangular_solve_real_cases(rng, dtype), *_triangular_solve_complex_cases(rng, dtype)]


def _triangular_solve_real_cases(rng, dtype):
    """Real triangles: lower and upper, transposed, unit diagonal, b on the left (tall, wide, a
    vector) and on the right, batched."""
    import jax.scipy.linalg as jsl

    n = lambda *s: normal(rng, s, dtype)
    tri = lambda *a, **k: lax.linalg.triangular_solve(*a, **k)
    return [
        case(
            P.triangular_solve_p,
            lambda a, b: jsl.solve_triangular(a, b, lower=True),
            _triangle(rng, 3, dtype),
            n(3, 2),
            label="lower, left, tall b",
        ),
        case(
            P.triangular_solve_p,
            lambda a, b: jsl.solve_triangular(a, b, trans=1),
            _triangle(rng, 3, dtype),
            n(3, 5),
            label="upper, transposed, wide b",
        ),
        case(
            P.triangular_solve_p,
            lambda a, b: jsl.solve_triangular(a, b, lower=True, unit_diagonal=True),
            _triangle(rng, 4, dtype),
            n(4),
            label="unit diagonal, vector b",
        ),
        case(
            P.triangular_solve_p,
            lambda a, b: tri(a, b, left_side=False, lower=True),
            _triangle(rng, 3, dtype),
            n(5, 3),
            label="right side, tall b",
        ),
        case(
            P.triangular_solve_p,
            lambda a, b: tri(a, b, left_side=False, transpose_a=True, unit_diagonal=True),
            _triangle(rng, 3, dtype),
            n(2, 3),
            label="right, upper, transposed, unit, wide b",
        ),
        case(
            P.triangular_solve_p,
            lambda a, b: tri(a, b, left_side=True, lower=True, transpose_a=True),
            _triangle(rng, 3, dtype, batch=(2,)),
            n(2, 3, 2),
            label="batched",
        ),
    ]


def _triangular_solve_complex_cases(rng, dtype):
    """Complex triangles: conjugate transposed on the left, conjugated on the right."""
    import jax.scipy.linalg as jsl

    n = lambda *s: normal(rng, s, dtype)
    tri = lambda *a, **k: lax.linalg.triangular_solve(*a, **k)
    return [
        case(
            P.triangular_solve_p,
            lambda a, b: jsl.solve_triangular(a, b, trans=2),
            _triangle(rng, 3, dtype) + 0.4j * n(3, 3),
            cnormal(rng, (3, 2), dtype),
            label="complex, conjugate transposed",
        ),
        case(
            P.triangular_solve_p,
            lambda a, b: tri(a, b, left_side=False, lower=True, conjugate_a=True),
            _triangle(rng, 3, dtype) + 0.4j * n(3, 3),
            cnormal(rng, (4, 3), dtype),
            label="complex, right, conjugated",
        ),
    ]


@triangular_solve.defkinks
def _triangular_solve_kinks(dtype):
    a = _triangle(np.random.default_rng(5), 3, dtype)
    a[1, 1] = 0.0  # singular: the solve divides by 0
    b = np.random.default_rng(6).standard_normal((3, 2)).astype(dtype)
    tri = lambda *x, **k: lax.linalg.triangular_solve(*x, **k)
    return [
        case(
            P.triangular_solve_p,
            lambda a, b: tri(a, b, left_side=True, lower=True),
            a,
            b,
            label="a zero on the diagonal, left",
        ),
        case(
            P.triangular_solve_p,
            lambda a, b: tri(a, b.T, left_side=False),
            a,
            b,
            label="a zero on the diagonal, right",
        ),
        case(
            P.triangular_solve_p,
            lambda a, b: tri(a, b, left_side=True, lower=True, unit_diagonal=True),
            a,
            b,
            label="a zero on the ignored diagonal",
        ),
    ]


# ---- tridiagonal_solve ----------------------------------------------------------------------------
def _tridiag_forward(dl, d, du, b, *, perturb_singular):
    out = P.tridiagonal_solve_p.bind(dl, d, du, b, perturb_singular=perturb_singular)
    return out, (dl, d, du, out)


@primitive_gate(
    P.tridiagonal_solve_p, forward=_tridiag_forward, params=("perturb_singular",), complex=True
)
def tridiagonal_solve(g, saved, *, perturb_singular, needs):
    """Y = A^{-1} B for the tridiagonal A with sub-, main and super-diagonals dl, d, du
    (..., m) (dl[0] and du[-1] unused), B (..., m, n).  Local gradients (Giles 2008),
    with Z = A^{-T} g (the tridiagonal solve with dl and du swapped and shifted, as JAX's
    transpose rule solves it) and dA = -Z Y^T read on the three diagonals:

        dB = Z,  dd_i = -sum_k Z_ik Y_ik,  ddl_i = -sum_k Z_ik Y_(i-1)k,
        ddu_i = -sum_k Z_ik Y_(i+1)k   (ddl_0 = ddu_(m-1) = 0)

    Complex diagonals as JAX takes them: the transpose, not the conjugate transpose (JAX's
    convention)."""
    dl, d, du, y = saved
    zero = jnp.zeros_like(dl[..., :1])
    dl_t = jnp.concatenate([zero, du[..., :-1]], axis=-1)
    du_t = jnp.concatenate([dl[..., 1:], zero], axis=-1)
    z = lax.linalg.tridiagonal_solve(dl_t, d, du_t, g, perturb_singular=perturb_singular)
    c = -z
    ddl = jnp.concatenate([zero, jnp.sum(c[..., 1:, :] * y[..., :-1, :], axis=-1)], axis=-1)
    dd = jnp.sum(c * y, axis=-1)
    ddu = jnp.concatenate([jnp.sum(c[..., :-1, :] * y[..., 1:, :], axis=-1), zero], axis=-1)
    return tuple(x if need else None for x, need in zip((ddl, dd, ddu, z), needs))


def _tridiagonal(rng, m, dtype, batch=()):
    """Diagonals of a diagonally dominant tridiagonal matrix."""
    dl, du = (0.5 * rng.standard_normal(batch + (m,)) for _ in range(2))
    d = 2.0 + rng.uniform(size=batch + (m,))
    return [x.astype(dtype) for x in (dl, d, du)]


@tridiagonal_solve.defcases
def _tridiagonal_solve_cases(rng, dtype):
    solve = lambda dl, d, du, b: lax.linalg.tridiagonal_solve(dl, d, du, b)
    return [
        case(
            P.tridiagonal_solve_p,
            solve,
            *_tridiagonal(rng, 4, dtype),
            normal(rng, (4, 2), dtype),
            label="4x4, two right-hand sides",
        ),
        case(
            P.tridiagonal_solve_p,
            solve,
            *_tridiagonal(rng, 3, dtype, batch=(2,)),
            normal(rng, (2, 3, 1), dtype),
            label="batched",
        ),
        case(
            P.tridiagonal_solve_p,
            solve,
            *[x + 0.3j * normal(rng, x.shape, dtype) for x in _tridiagonal(rng, 4, dtype)],
            cnormal(rng, (4, 2), dtype),
            label="complex",
        ),
    ]


@tridiagonal_solve.defkinks
def _tridiagonal_solve_kinks(dtype):
    dl, d, du = _tridiagonal(np.random.default_rng(11), 3, dtype)
    dl[1] = d[1] = du[1] = 0.0  # a zero row: singular, LAPACK's solution is NaN
    b = np.ones((3, 2), dtype)
    return [
        case(
            P.tridiagonal_solve_p,
            lambda *a: lax.linalg.tridiagonal_solve(*a),
            dl,
            d,
            du,
            b,
            label="singular (a zero row)",
        )
    ]
