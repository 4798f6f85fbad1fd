"""Gates of JAX's triangular factorizations: cholesky, lu, qr (behind jnp.linalg.cholesky,
jax.scipy.linalg.cho_factor, multivariate_normal.logpdf, jnp.linalg.solve/inv/det/slogdet, the
LU of jax.scipy.linalg.solve and expm, jnp.linalg.qr).

Each rule is the transpose of JAX's forward-mode rule for the factorization, written out: the
factor's tangent is a triangular solve or two of the input's tangent, masked to a triangle; its
transpose is the same solves with the transposed triangle, applied to the masked cotangent.
Integer outputs (pivots, permutations) carry no gradient. Complex matrices too (JAX's
convention: fnn.ops.primitives.complex_parts); leading axes are batch axes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from fnn.autodiff.case_values import cnormal, hpd, normal, spd
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.primitive_cases import case
from fnn.errors import GateError, describe
from fnn.ops.primitives._matrices import H, T, conj, diag, mm, tril, triu

tri_solve = lax.linalg.triangular_solve


# ---- cholesky -----------------------------------------------------------------------------------
def _cholesky_forward(a):
    l = tril(P.cholesky_p.bind(a))  # LAPACK leaves a's upper triangle above L: JAX's rule drops it
    return l, l


@primitive_gate(P.cholesky_p, forward=_cholesky_forward, params=(), complex=True)
def cholesky(g, l):
    """L with L L^H = A, A (..., n, n) symmetric (Hermitian) positive definite (its lower
    triangle read). The output is lower triangular (JAX's rule zeroes what LAPACK leaves above
    the diagonal). Local gradient (Murray 2016, "Differentiation of the Cholesky
    decomposition", as the transpose of JAX's forward rule dL = L Phi(L^{-1} dA L^{-H})):

        dA = L^{-T} Phi(L^T g) conj(L)^{-1},   Phi(X) = the lower triangle of X, its diagonal
                                               halved

    (for a real A, L^{-T} Phi(L^T g) L^{-1}), not symmetrized (JAX's rule takes any dA; for a
    symmetric perturbation only the symmetric part counts)."""
    n = l.shape[-1]
    p = tril(mm(T(l), g) / (1.0 + jnp.eye(n, dtype=l.dtype)))
    p = tri_solve(l, p, left_side=True, lower=True, transpose_a=True)
    return (
        tri_solve(
            l, p, left_side=False, lower=True, transpose_a=False, conjugate_a=jnp.iscomplexobj(l)
        ),
    )


@cholesky.defcases
def _cholesky_cases(rng, dtype):
    import jax.scipy.linalg as jsl

    chol = jnp.linalg.cholesky
    return [
        case(
            P.cholesky_p,
            chol,
            spd(rng, 4, dtype),
            numeric=False,
            label="4x4 (unstructured steps: the primitive reads one triangle)",
        ),
        dataclasses.replace(
            case(P.cholesky_p, chol, spd(rng, 3, dtype)),
            structure="positive definite",
            label="3x3, stepped as a positive definite matrix",
        ),
        case(
            P.cholesky_p,
            lambda a: jsl.cho_factor(a, lower=True)[0],
            spd(rng, 3, dtype, batch=(2,)),
            numeric=False,
            label="batched, cho_factor",
        ),
        case(
            P.cholesky_p,
            chol,
            hpd(rng, 3, dtype, batch=(2,)),
            numeric=False,
            label="complex Hermitian, batched",
        ),
    ]


@cholesky.defkinks
def _cholesky_kinks(dtype):
    singular = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]], dtype)
    indefinite = np.array([[1.0, 2.0], [2.0, 1.0]], dtype)
    return [
        case(
            P.cholesky_p,
            jnp.linalg.cholesky,
            singular,
            label="positive semi-definite, singular: NaN factor",
        ),
        case(P.cholesky_p, jnp.linalg.cholesky, indefinite, label="indefinite: NaN factor"),
    ]


# ---- lu -------------------------------------------------------------------------------------------
def _lu_forward(a):
    lu, pivots, perm = P.lu_p.bind(a)
    return (lu, pivots, perm), (lu, perm)


def _lu_pullback(lu, perm, g):
    """One matrix's gradient: the transpose of JAX's _lu_jvp_inner (De Hoog, Anderssen and Lukas,
    "Differentiation of matrix functionals using triangular factorization", 2011):
    dLU = L tril(X, -1) + triu(X) U with X = L^{-1} P dA U^{-1}."""
    m, n = lu.shape
    k = min(m, n)
    dtype = lu.dtype
    l = jnp.pad(tril(lu[:, :k], -1), ((0, 0), (0, m - k))) + jnp.eye(m, dtype=dtype)
    u = jnp.pad(triu(lu[:k, :]), ((0, n - k), (0, 0)))
    u = u + jnp.pad(jnp.eye(n - k, dtype=dtype), ((k, 0), (k, 0)))
    dx = tril(mm(T(l), g), -1) + triu(mm(g, T(u)))
    dx = tri_solve(u, dx, left_side=False, lower=False, transpose_a=True)
    dpa = tri_solve(l, dx, left_side=True, lower=True, transpose_a=True, unit_diagonal=True)
    return jnp.zeros_like(dpa).at[perm].add(dpa)  # P^T: the rows back in a's order


@primitive_gate(P.lu_p, forward=_lu_forward, params=(), complex=True)
def lu(g, saved):
    """(LU, pivots, permutation) with A[permutation] = L U, A (..., m, n), L unit lower
    triangular (m x min(m, n)) and U upper (min(m, n) x n) packed in one matrix.  Local gradient
    (Giles 2008; De Hoog et al. 2011; the transpose of JAX's rule), with G the
    upstream gradient of the packed LU and L, U padded to square:

        dA = P^T L^{-T} (tril(L^T G, -1) + triu(G U^T)) U^{-T}

    pivots and permutation are integers: no gradient. JAX's rule has no conjugate in it, so
    for a complex A this is the same formula (plain transposes)."""
    lu_, perm = saved
    pull = _lu_pullback
    for _ in range(lu_.ndim - 2):
        pull = jax.vmap(pull)
    return (pull(lu_, perm, g[0]),)


@lu.defcases
def _lu_cases(rng, dtype):
    n = lambda *s: normal(rng, s, dtype)
    lu_ = lambda a: lax.linalg.lu(a)[0]
    return [
        case(P.lu_p, lu_, n(4, 4), label="square"),
        case(P.lu_p, lu_, n(5, 3), label="tall"),
        case(P.lu_p, lu_, n(3, 5), label="wide"),
        case(P.lu_p, lu_, n(2, 3, 3), label="batched"),
        case(P.lu_p, lu_, cnormal(rng, (3, 4), dtype), label="complex, wide"),
    ]


@lu.defkinks
def _lu_kinks(dtype):
    a = np.random.default_rng(7).standard_normal((3, 3)).astype(dtype)
    a[:, 1] = 0.0  # singular: U has an exact zero on its diagonal
    return [case(P.lu_p, lambda a: lax.linalg.lu(a)[0], a, label="singular (a zero column)")]


# ---- qr -------------------------------------------------------------------------------------------
_QR_PARAMS = ("pivoting", "full_matrices", "use_magma")


def _qr_forward(x, *, pivoting, full_matrices, **params):
    m, n = x.shape[-2:]
    if pivoting and m < n:
        raise GateError(
            f"rule 'lax.qr' does not handle pivoting=True for a wide matrix ({describe(x)}): "
            "JAX's rule builds R's right block from x's columns in their original order, not "
            "the pivoted one, so its gradient there is not the derivative (and fnn gives JAX's "
            "gradients or none). Pivot a tall or square matrix, or use pivoting=False."
        )
    outs = tuple(P.qr_p.bind(x, pivoting=pivoting, full_matrices=full_matrices, **params))
    return outs, (x, outs)


def _thin_qr_pullback(q, r, dq, dr):
    """The transpose of JAX's _thin_qr_jvp (J. Townsend's note on the QR derivative,
    j-towns.github.io/papers/qr-derivative.pdf), for X = Q R with m >= n: with Y = Q^H dX R^{-1},
    dQ = Q (skew(Y) - Y) + dX R^{-1} and dR = (Y - skew(Y)) R, skew(Y) = tril(Y, -1) -
    tril(Y, -1)^H + i Im(diag(Y)) (the last term for complex X), so

        C = Q^T Qbar - Rbar R^T,
        dX = (Qbar + conj(Q) (tril(C - C^H, -1) - C + i Im(diag(C)))) R^{-T}"""
    c = mm(T(q), dq) - mm(dr, T(r))
    ybar = tril(c - H(c), -1) - c
    if jnp.iscomplexobj(c):  # the transpose of skew's i Im(diag(Y))
        ybar = ybar + diag(1j * jnp.imag(jnp.diagonal(c, axis1=-2, axis2=-1)))
    dx = dq + mm(conj(q), ybar)
    return tri_solve(r, dx, left_side=False, lower=False, transpose_a=True)


def _qr_pullback(x, q, r, p, dq, dr, *, full_matrices):
    """One matrix's gradient (see qr's docstring)."""
    m, n = x.shape
    if m < n:  # X = [X1 X2] = Q [R1 R2]: X1 = Q R1 is square, R2 = Q^H X2
        x2, dr1, dr2 = x[:, m:], dr[:, :m], dr[:, m:]
        dx1 = _thin_qr_pullback(q, r[:, :m], dq + H(mm(dr2, T(x2))), dr1)
        dx = jnp.concatenate([dx1, mm(conj(q), dr2)], axis=1)
    elif not full_matrices or m == n:
        dx = _thin_qr_pullback(q, r, dq, dr)
    else:  # Q's last m - n columns too (arXiv:2409.13374, eq. 32-33, as JAX's rule)
        q_mn, q_mp, q_nn, q_pn = q[:, :n], q[:, n:], q[:n, :n], q[n:, :n]
        # Z = Q_pn (Q_nn - I)^{-1}, from the transposed system as JAX solves it (by LU)
        lu_, _, perm = lax.linalg.lu(T(q_nn - jnp.eye(n, dtype=q.dtype)))
        zt = _lu_solve(lu_, perm, T(q_pn))
        z = T(zt)
        b = q_mn + mm(q_mp, z)
        g = dq[:, n:]  # dQ_mp = dQ_mn Z^H - B (dQ_pn - Z dQ_nn)^H, transposed:
        dd = H(-mm(T(b), g))  # the cotangent of D = dQ_pn - Z dQ_nn
        dq_mn = dq[:, :n] + mm(g, conj(z)) + jnp.concatenate([-mm(T(z), dd), dd], axis=0)
        dx = _thin_qr_pullback(q_mn, r[:n, :], dq_mn, dr[:n, :])
    if p is not None:  # X[:, p] = Q R: the columns back in x's order
        dx = jnp.zeros_like(dx).at[:, p].add(dx)
    return dx


def _lu_solve(lu_, perm, b):
    """A^{-1} b from A[perm] = L U."""
    y = tri_solve(lu_, b[perm], left_side=True, lower=True, unit_diagonal=True)
    return tri_solve(lu_, y, left_side=True, lower=False)


@primitive_gate(P.qr_p, forward=_qr_forward, params=_QR_PARAMS, complex=True)
def qr(g, saved, *, pivoting, full_matrices, **params):
    """(Q, R[, P]) with X[..., P] = Q R, X (..., m, n), Q with orthonormal columns (m x k),
    R upper triangular (k x n); k = min(m, n), or m with full_matrices. Local gradient, the
    transpose of JAX's rule (Giles 2008; Townsend's note for the thin case):

        C = Q^T Qbar - Rbar R^T,   dX = (Qbar + Q (tril(C - C^T, -1) - C)) R^{-T}

    for a real X with m >= n (a complex X: conj(Q), C^H, and the transpose of the imaginary
    diagonal JAX's rule adds, see _thin_qr_pullback); a wide X = [X1 X2] adds Q Rbar2 for X2
    and X2 Rbar2^T to X1's Qbar (R2 = Q^T X2); full_matrices with m > n adds the transpose of
    the last m - n columns' tangent (arXiv:2409.13374, eq. 32-33). The pivots P are integers:
    no gradient (their columns are put back in place). A rank-deficient X (a zero on R's
    diagonal) gives JAX's infinities and NaNs."""
    x, outs = saved
    q, r = outs[0], outs[1]
    p = outs[2] if pivoting else None
    pull = lambda x, q, r, p, dq, dr: _qr_pullback(x, q, r, p, dq, dr, full_matrices=full_matrices)
    for _ in range(x.ndim - 2):
        pull = jax.vmap(pull, in_axes=(0, 0, 0, 0 if pivoting else None, 0, 0))
    return (pull(x, q, r, p, g[0], g[1]),)


@qr.defcases
def _qr_cases(rng, dtype):
    import jax.scipy.linalg as jsl

    n = lambda *s: normal(rng, s, dtype)
    return [
        case(P.qr_p, jnp.linalg.qr, n(5, 3), label="tall, reduced"),
        case(P.qr_p, jnp.linalg.qr, n(3, 3), label="square"),
        case(P.qr_p, jnp.linalg.qr, n(3, 5), label="wide"),
        case(P.qr_p, lambda x: jnp.linalg.qr(x, mode="complete"), n(5, 3), label="tall, complete"),
        case(
            P.qr_p, lambda x: jsl.qr(x, pivoting=True, mode="economic"), n(5, 4), label="pivoting"
        ),
        case(P.qr_p, jnp.linalg.qr, n(2, 4, 3), label="batched"),
        # JAX's rule fails here (it indexes the tangent's columns with batched pivots):
        # fnn's gradient is checked against central differences alone
        case(
            P.qr_p,
            lambda x: jsl.qr(x, pivoting=True, mode="economic"),
            n(2, 3, 3),
            reference=False,
            label="batched, pivoting (no JAX rule)",
        ),
        case(P.qr_p, jnp.linalg.qr, cnormal(rng, (2, 4, 3), dtype), label="complex, batched"),
        case(
            P.qr_p,
            lambda x: jnp.linalg.qr(x, mode="complete"),
            cnormal(rng, (4, 2), dtype),
            label="complex, complete",
        ),
        case(P.qr_p, jnp.linalg.qr, cnormal(rng, (2, 4), dtype), label="complex, wide"),
    ]


@qr.defkinks
def _qr_kinks(dtype):
    x = np.random.default_rng(8).standard_normal((4, 3)).astype(dtype)
    x[:, 1] = 0.0  # rank-deficient: R has a zero on its diagonal
    return [case(P.qr_p, jnp.linalg.qr, x, label="rank-deficient (a zero column)")]
