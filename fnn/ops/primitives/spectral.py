"""Gates of JAX's spectral decompositions: svd and eigh (behind jnp.linalg.svd, svdvals,
norm(ord=2) and norm(ord='nuc'), lstsq, eigh, eigvalsh).

Both rules are the transposes of JAX's forward rules: nondegenerate perturbation theory, where
an eigenvector's (a singular vector's) tangent mixes in the others with weights F_ij =
1 / (w_j - w_i) (1 / (s_j^2 - s_i^2)). Where two eigenvalues (singular values) coincide the
weight is infinite, and so, with a cotangent on the vectors, is the gradient: JAX's rule gives
infinities and NaNs there, and so does fnn's, in the same places (test_kinks). A rule leaves
out the terms of outputs no cotangent reached (`got`), as JAX leaves out a symbolic zero, so
eigvalsh and svdvals losses stay finite at repeated eigenvalues, as under jax.grad.

The forward computes what JAX's rule computes under differentiation: eigh of (A + A^T) / 2,
the thin SVD with its vectors (also for compute_uv=False). Real matrices only; leading axes are
batch axes.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from fnn.autodiff.gate import primitive_gate
from fnn.errors import GateError, describe
from fnn.ops.primitives._define import bare, case
from fnn.ops.primitives._matrices import T, diag, mm, real_only, spread, symmetric

_SVD_PARAMS = ("full_matrices", "compute_uv", "subset_by_index", "algorithm")
_EIGH_PARAMS = ("lower", "sort_eigenvalues", "subset_by_index", "algorithm")


def _whole(rule, subset, k, x):
    """Refuse a partial decomposition (subset_by_index short of all k values)."""
    if subset is not None and tuple(subset) != (0, k):
        raise GateError(f"rule '{rule}' does not handle subset_by_index={tuple(subset)!r} (a "
                        f"partial decomposition of {describe(x)}): JAX's rule does not "
                        "differentiate it on CPU and GPU either. Decompose the whole matrix and "
                        "slice the result.")


# ---- svd ------------------------------------------------------------------------------------------
def _svd_forward(a, *, full_matrices, compute_uv, subset_by_index, algorithm=None):
    real_only("lax.svd", a)
    m, n = a.shape[-2:]
    _whole("lax.svd", subset_by_index, min(m, n), a)
    if compute_uv and full_matrices and m != n:
        raise GateError(
            f"rule 'lax.svd' does not handle full_matrices=True with a non-square matrix "
            f"({describe(a)}): the extra singular vectors are not unique, and JAX's rule does "
            "not differentiate them either. Use full_matrices=False (jnp.linalg.svd(a, "
            "full_matrices=False)).")
    s, u, vt = P.svd_p.bind(a, full_matrices=False, compute_uv=True,
                            subset_by_index=subset_by_index, algorithm=algorithm)
    return ((s, u, vt) if compute_uv else (s,)), (s, u, vt)


@primitive_gate(P.svd_p, forward=_svd_forward, params=_SVD_PARAMS)
def svd(g, saved, *, compute_uv, got, **params):
    """(s, U, V^T) with A = U diag(s) V^T, A (..., m, n), k = min(m, n) singular values in
    decreasing order (just s with compute_uv=False).  Local gradient (Townsend 2016,
    "Differentiating the singular value decomposition"; Seeger et al. 2017; as JAX's rule):

        F_ij = 1 / (s_j^2 - s_i^2) (0 on the diagonal)
        J = diag(sbar) + (F o (U^T Ubar) + (F o (U^T Ubar))^T) diag(s)
                       + diag(s) (F o (V^T Vbar) + (F o (V^T Vbar))^T)
        dA = U J V^T  [+ (I - U U^T) Ubar diag(1/s) V^T if m > n]
                      [+ U diag(1/s) Vbar^T (I - V V^T)  if n > m]

    Repeated singular values make F infinite (JAX's NaNs, where a cotangent reaches U or V);
    a zero one the last terms' 1/s."""
    s, u, vt = saved
    sbar = g[0]
    got_u, got_v = compute_uv and got[1], compute_uv and got[2]
    s_row = s[..., None, :]  # s_j along each row
    s_col = T(s_row)
    j = diag(sbar) if got[0] else jnp.zeros(s.shape + s.shape[-1:], s.dtype)
    if got_u or got_v:
        eye = jnp.eye(s.shape[-1], dtype=s.dtype)
        f = 1 / ((s_row + s_col) * (s_row - s_col) + eye) - eye
    if got_u:
        gu = f * mm(T(u), g[1])
        j = j + s_row * (gu + T(gu))
    if got_v:
        gv = f * mm(vt, T(g[2]))
        j = j + s_col * (gv + T(gv))
    da = mm(u, mm(j, vt))
    m, n = u.shape[-2], vt.shape[-1]
    if got_u and m > n:
        h = g[1] / s_row
        da = da + mm(h + mm(u, mm(T(u), -h)), vt)
    if got_v and n > m:
        h = T(g[2]) / s_row
        da = da + mm(u, T(h + mm(T(vt), mm(vt, -h))))
    return (da,)


svd.reference = bare(P.svd_p)  # compared with JAX's rule for the primitive as it is bound


@svd.defcases
def _svd_cases(rng, dtype):
    thin = lambda a: jnp.linalg.svd(a, full_matrices=False)
    return [case(P.svd_p, thin, spread(rng, (3, 3), dtype), label="square, thin"),
            case(P.svd_p, thin, spread(rng, (5, 3), dtype), label="tall"),
            case(P.svd_p, thin, spread(rng, (3, 5), dtype), label="wide"),
            case(P.svd_p, jnp.linalg.svd, spread(rng, (3, 3), dtype),
                 label="square, full_matrices"),
            case(P.svd_p, jnp.linalg.svdvals, spread(rng, (4, 3), dtype),
                 label="singular values alone"),
            case(P.svd_p, thin, spread(rng, (2, 3, 4), dtype), label="batched")]


@svd.defkinks
def _svd_kinks(dtype):
    rng = np.random.default_rng(9)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    tied = (2.0 * q).astype(dtype)  # three equal singular values
    rank1 = np.outer(rng.standard_normal(4), rng.standard_normal(3)).astype(dtype)
    zero = spread(rng, (3, 3), dtype)
    zero[:, 2] = 0.0  # square, one zero singular value (and a tall/wide block of zeros below)
    thin = lambda a: jnp.linalg.svd(a, full_matrices=False)
    return [case(P.svd_p, thin, tied, label="three equal singular values"),
            case(P.svd_p, jnp.linalg.svdvals, tied, label="equal singular values, values alone"),
            case(P.svd_p, thin, zero, label="square with a zero singular value"),
            case(P.svd_p, thin, rank1, label="tall, rank 1 (zero singular values)"),
            case(P.svd_p, thin, rank1.T.copy(), label="wide, rank 1")]


# ---- eigh -----------------------------------------------------------------------------------------
def _eigh_forward(a, *, subset_by_index, **params):
    real_only("lax.eigh", a)
    _whole("lax.eigh", subset_by_index, a.shape[-1], a)
    # JAX's rule decomposes the symmetric part: the same matrix for the symmetric input
    # jnp.linalg.eigh passes (it symmetrizes first), and what JAX computes under jax.grad
    v, w = P.eigh_p.bind((a + T(a)) / 2, subset_by_index=subset_by_index, **params)
    return (v, w), (v, w)


@primitive_gate(P.eigh_p, forward=_eigh_forward, params=_EIGH_PARAMS)
def eigh(g, saved, *, got, **params):
    """(V, w) with A = V diag(w) V^T, A (..., n, n) symmetric (the eigendecomposition of
    (A + A^T) / 2, as JAX's rule takes it), w in increasing order.  Local gradient (Giles 2008
    sec. 3.1; Seeger et al. 2017), the transpose of JAX's rule:

        F_ij = 1 / (w_j - w_i) (0 on the diagonal)
        dA = V (diag(wbar) + F o (V^T Vbar)) V^T

    not symmetrized (JAX's rule takes any dA; a symmetric perturbation sees its symmetric part).
    Repeated eigenvalues make F infinite: JAX's infinities and NaNs where a cotangent reaches V;
    none where only w is used (eigvalsh)."""
    v, w = saved
    n = w.shape[-1]
    inner = diag(g[1]) if got[1] else jnp.zeros(v.shape, v.dtype)
    if got[0]:
        eye = jnp.eye(n, dtype=w.dtype)
        f = lax.integer_pow(eye + w[..., None, :] - w[..., :, None], -1) - eye
        inner = inner + f * mm(T(v), g[0])
    return (mm(v, mm(inner, T(v))),)


eigh.reference = bare(P.eigh_p)  # JAX's rule for eigh as bound (it symmetrizes inside)


@eigh.defcases
def _eigh_cases(rng, dtype):
    eigh_ = jnp.linalg.eigh
    return [case(P.eigh_p, eigh_, symmetric(rng, 4, dtype), numeric=False,
                 label="4x4 (unstructured steps: the rule's dA is not symmetrized)"),
            dataclasses.replace(case(P.eigh_p, eigh_, symmetric(rng, 3, dtype)),
                                structure="symmetric", label="3x3, stepped symmetrically"),
            dataclasses.replace(case(P.eigh_p, jnp.linalg.eigvalsh, symmetric(rng, 3, dtype)),
                                structure="symmetric", label="eigenvalues alone"),
            dataclasses.replace(case(P.eigh_p, lambda a: eigh_(a, UPLO="U"),
                                     symmetric(rng, 3, dtype, batch=(2,))),
                                structure="symmetric", label="batched, upper")]


@eigh.defkinks
def _eigh_kinks(dtype):
    tied = np.diag([1.0, 1.0, 2.0]).astype(dtype)
    q, _ = np.linalg.qr(np.random.default_rng(10).standard_normal((3, 3)))
    rotated = (q @ tied @ q.T + (q @ tied @ q.T).T) / 2
    return [case(P.eigh_p, jnp.linalg.eigh, tied, label="a repeated eigenvalue, diagonal"),
            case(P.eigh_p, jnp.linalg.eigh, rotated.astype(dtype),
                 label="a repeated eigenvalue, rotated"),
            case(P.eigh_p, jnp.linalg.eigh, np.eye(3, dtype=dtype), label="identity")]
