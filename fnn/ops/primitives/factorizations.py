"""Gates of JAX's triangular factorizations: cholesky, lu, qr (behind jnp.linalg.cholesky,
jax.scipy.linalg.cho_factor, multivariate_normal.logpdf, jnp.linalg.solve/inv/det/slogdet, the
LU of jax.scipy.linalg.solve and expm, jnp.linalg.qr).

Each rule is the transpose of JAX's forward-mode rule for the factorization, written out: the
factor's tangent is a triangular solve or two of the input's tangent, masked to a triangle; its
transpose is the same solves with the transposed triangle, applied to the masked cotangent.
Integer outputs (pivots, permutations) carry no gradient. Real matrices only; leading axes are
batch axes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from fnn.autodiff.gate import primitive_gate
from fnn.errors import GateError, describe
from fnn.ops._cases import normal
from fnn.ops.primitives._define import case
from fnn.ops.primitives._matrices import T, mm, real_only, spd, spread, tril, triu

tri_solve = lax.linalg.triangular_solve


# ---- cholesky -----------------------------------------------------------------------------------
def _cholesky_forward(a):
    real_only("lax.cholesky", a)
    l = tril(P.cholesky_p.bind(a))  # LAPACK leaves a's upper triangle above L: JAX's rule drops it
    return l, l


@primitive_gate(P.cholesky_p, forward=_cholesky_forward, params=())
def cholesky(g, l):
    """L with L L^T = A, A (..., n, n) symmetric positive definite (its lower triangle read).
    The output is lower triangular (JAX's rule zeroes what LAPACK leaves above the diagonal).
    Local gradient (Murray 2016, "Differentiation of the Cholesky decomposition", eq. 10, as the
    transpose of JAX's forward rule dL = L Phi(L^{-1} dA L^{-T})):

        dA = L^{-T} Phi(L^T g) L^{-1},   Phi(X) = the lower triangle of X, its diagonal halved

    not symmetrized (JAX's rule takes any dA; for a symmetric perturbation only the symmetric
    part counts)."""
    n = l.shape[-1]
    p = tril(mm(T(l), g) / (1.0 + jnp.eye(n, dtype=l.dtype)))
    p = tri_solve(l, p, left_side=True, lower=True, transpose_a=True)
    return (tri_solve(l, p, left_side=False, lower=True, transpose_a=False),)


@cholesky.defcases
def _cholesky_cases(rng, dtype):
    import jax.scipy.linalg as jsl

    chol = jnp.linalg.cholesky
    return [case(P.cholesky_p, chol, spd(rng, 4, dtype), numeric=False,
                 label="4x4 (unstructured steps: the primitive reads one triangle)"),
            dataclasses.replace(case(P.cholesky_p, chol, spd(rng, 3, dtype)),
                                structure="positive definite",
                                label="3x3, stepped as a positive definite matrix"),
            case(P.cholesky_p, lambda a: jsl.cho_factor(a, lower=True)[0],
                 spd(rng, 3, dtype, batch=(2,)), numeric=False, label="batched, cho_factor")]


@cholesky.defkinks
def _cholesky_kinks(dtype):
    singular = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]], dtype)
    indefinite = np.array([[1.0, 2.0], [2.0, 1.0]], dtype)
    return [case(P.cholesky_p, jnp.linalg.cholesky, singular,
                 label="positive semi-definite, singular: NaN factor"),
            case(P.cholesky_p, jnp.linalg.cholesky, indefinite, label="indefinite: NaN factor")]


# ---- lu -------------------------------------------------------------------------------------------
def _lu_forward(a):
    real_only("lax.lu", a)
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


@primitive_gate(P.lu_p, forward=_lu_forward, params=())
def lu(g, saved):
    """(LU, pivots, permutation) with A[permutation] = L U, A (..., m, n), L unit lower
    triangular (m x min(m, n)) and U upper (min(m, n) x n) packed in one matrix.  Local gradient
    (Giles 2008 sec. 3.1 / De Hoog et al. 2011, the transpose of JAX's rule), with G the
    upstream gradient of the packed LU and L, U padded to square:

        dA = P^T L^{-T} (tril(L^T G, -1) + triu(G U^T)) U^{-T}

    pivots and permutation are integers: no gradient."""
    lu_, perm = saved
    pull = _lu_pullback
    for _ in range(lu_.ndim - 2):
        pull = jax.vmap(pull)
    return (pull(lu_, perm, g[0]),)


@lu.defcases
def _lu_cases(rng, dtype):
    n = lambda *s: normal(rng, s, dtype)
    lu_ = lambda a: lax.linalg.lu(a)[0]
    return [case(P.lu_p, lu_, n(4, 4), label="square"),
            case(P.lu_p, lu_, n(5, 3), label="tall"),
            case(P.lu_p, lu_, n(3, 5), label="wide"),
            case(P.lu_p, lu_, n(2, 3, 3), label="batched")]


@lu.defkinks
def _lu_kinks(dtype):
    a = np.random.default_rng(7).standard_normal((3, 3)).astype(dtype)
    a[:, 1] = 0.0  # singular: U has an exact zero on its diagonal
    return [case(P.lu_p, lambda a: lax.linalg.lu(a)[0], a, label="singular (a zero column)")]
