"""Gates of JAX's linear solves: triangular_solve, tridiagonal_solve, and custom_linear_solve
(behind jnp.linalg.solve/inv/slogdet, jax.scipy.linalg.solve, jax.scipy.sparse.linalg.cg).

A solve Y = A^{-1} B is linear in B and, through the inverse, smooth in A: with Z = A^{-T} Ybar
(one solve with the transposed matrix),

    Bbar = Z,        Abar = -Z Y^T

(Giles 2008, "An extended collection of matrix derivative results", sec. 2.2.3: C = A^{-1} B
gives Bbar = A^{-T} Cbar, Abar = -Bbar C^T). A triangular A keeps only its triangle's gradient;
a tridiagonal one its three diagonals'. custom_linear_solve's matrix is a function (matvec)
whose constants may be differentiated values: its gradient is matvec's own backward at the
solution, seeded with -Z (fnn's interpreter runs matvec's jaxpr on a tape of its own).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from fnn.autodiff.backward import backward
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.tape import Traced
from fnn.errors import GateError, describe
from fnn.ops._cases import normal
from fnn.ops.primitives._define import case
from fnn.ops.primitives._matrices import T, mm, real_only, spd, tril, triu
from fnn.ops.primitives.loops import FNN_PARAMS, Body, body_interpreter, control_rule

# ---- triangular_solve ---------------------------------------------------------------------------
_TRI_PARAMS = ("left_side", "lower", "transpose_a", "conjugate_a", "unit_diagonal")


def _tri_forward(a, b, **params):
    real_only("lax.triangular_solve", a, b)
    out = P.triangular_solve_p.bind(a, b, **params)
    return out, (a, out)


@primitive_gate(P.triangular_solve_p, forward=_tri_forward, params=_TRI_PARAMS)
def triangular_solve(g, saved, *, left_side, lower, transpose_a, conjugate_a, unit_diagonal,
                     needs):
    """Y = op(A)^{-1} B (left_side) or B op(A)^{-1}, A (..., m, m) triangular (only its
    `lower` or upper triangle is read, its diagonal taken as ones with unit_diagonal), op(A) =
    A^T with transpose_a.  Local gradients (Giles 2008, 2.2.3), with Z the solve of the upstream
    g with op(A)^T:  dB = Z;  d op(A) = -Z Y^T (left) or -Y^T Z (right), kept on A's triangle
    (off the diagonal with unit_diagonal). The products are grouped as JAX's rule groups them
    (the cheaper way for the shapes), so a singular A gives JAX's infinities and NaNs."""
    a, y = saved
    flags = dict(left_side=left_side, lower=lower, conjugate_a=conjugate_a,
                 unit_diagonal=unit_diagonal)
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
        k = 1 if unit_diagonal else 0
        da = tril(d_op, -k) if lower else triu(d_op, k)
    return da, z


def _triangle(rng, n, dtype, lower=True, batch=()):
    """A well-conditioned triangular matrix (the other triangle random too: never read)."""
    x = 0.4 * rng.standard_normal(batch + (n, n)) + 2.0 * np.eye(n)
    return x.astype(dtype)


@triangular_solve.defcases
def _triangular_solve_cases(rng, dtype):
    import jax.scipy.linalg as jsl

    n = lambda *s: normal(rng, s, dtype)
    tri = lambda *a, **k: lax.linalg.triangular_solve(*a, **k)
    return [
        case(P.triangular_solve_p, lambda a, b: jsl.solve_triangular(a, b, lower=True),
             _triangle(rng, 3, dtype), n(3, 2), label="lower, left, tall b"),
        case(P.triangular_solve_p, lambda a, b: jsl.solve_triangular(a, b, trans=1),
             _triangle(rng, 3, dtype), n(3, 5), label="upper, transposed, wide b"),
        case(P.triangular_solve_p, lambda a, b: jsl.solve_triangular(a, b, lower=True,
                                                                     unit_diagonal=True),
             _triangle(rng, 4, dtype), n(4), label="unit diagonal, vector b"),
        case(P.triangular_solve_p, lambda a, b: tri(a, b, left_side=False, lower=True),
             _triangle(rng, 3, dtype), n(5, 3), label="right side, tall b"),
        case(P.triangular_solve_p, lambda a, b: tri(a, b, left_side=False, transpose_a=True,
                                                    unit_diagonal=True),
             _triangle(rng, 3, dtype), n(2, 3), label="right, upper, transposed, unit, wide b"),
        case(P.triangular_solve_p, lambda a, b: tri(a, b, left_side=True, lower=True,
                                                    transpose_a=True),
             _triangle(rng, 3, dtype, batch=(2,)), n(2, 3, 2), label="batched"),
    ]


@triangular_solve.defkinks
def _triangular_solve_kinks(dtype):
    a = _triangle(np.random.default_rng(5), 3, dtype)
    a[1, 1] = 0.0  # singular: the solve divides by 0
    b = np.random.default_rng(6).standard_normal((3, 2)).astype(dtype)
    tri = lambda *x, **k: lax.linalg.triangular_solve(*x, **k)
    return [case(P.triangular_solve_p, lambda a, b: tri(a, b, left_side=True, lower=True), a, b,
                 label="a zero on the diagonal, left"),
            case(P.triangular_solve_p, lambda a, b: tri(a, b.T, left_side=False), a, b,
                 label="a zero on the diagonal, right"),
            case(P.triangular_solve_p, lambda a, b: tri(a, b, left_side=True, lower=True,
                                                        unit_diagonal=True), a, b,
                 label="a zero on the ignored diagonal")]
