"""Gates of JAX's spectral decompositions: svd and eigh (behind jnp.linalg.svd, svdvals,
norm(ord=2) and norm(ord='nuc'), lstsq, eigh, eigvalsh).

Both rules are the transposes of JAX's forward rules: nondegenerate perturbation theory, where
an eigenvector's (a singular vector's) tangent mixes in the others with weights F_ij =
1 / (w_j - w_i) (1 / (s_j^2 - s_i^2)). Where two eigenvalues (singular values) coincide the
weight is infinite, and so, with a cotangent on the vectors, is the gradient: JAX's rule gives
infinities and NaNs there, and so does fnn's, in the same places (test_kinks). A rule leaves
out the terms of outputs no cotangent reached (`got`), as JAX leaves out a symbolic zero, so
eigvalsh and svdvals losses stay finite at repeated eigenvalues, as under JAX's own gradient.

The forward computes what JAX's rule computes under differentiation: eigh of (A + A^T) / 2,
the thin SVD with its vectors (also for compute_uv=False). Complex matrices too (eigh's
Hermitian; JAX's convention: fnn.ops.primitives.complex_parts); leading axes are batch axes.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from fnn.autodiff.case_values import cnormal, hermitian, spread, symmetric
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.primitive_cases import bare, case
from fnn.errors import GateError, describe
from fnn.ops.primitives._matrices import H, T, conj, diag, mm

_SVD_PARAMS = ("full_matrices", "compute_uv", "subset_by_index", "algorithm")
_EIGH_PARAMS = ("lower", "sort_eigenvalues", "subset_by_index", "algorithm")


def _whole(rule, subset, k, x):
    """Refuse a partial decomposition (subset_by_index short of all k values)."""
    if subset is not None and tuple(subset) != (0, k):
        raise GateError(
            f"rule '{rule}' does not handle subset_by_index={tuple(subset)!r} (a "
            f"partial decomposition of {describe(x)}): JAX's rule does not "
            "differentiate it on CPU and GPU either. Decompose the whole matrix and "
            "slice the result."
        )


# ---- svd ------------------------------------------------------------------------------------------
def _svd_forward(a, *, full_matrices, compute_uv, subset_by_index, algorithm=None):
    m, n = a.shape[-2:]
    _whole("lax.svd", subset_by_index, min(m, n), a)
    if compute_uv and full_matrices and m != n:
        raise GateError(
            f"rule 'lax.svd' does not handle full_matrices=True with a non-square matrix "
            f"({describe(a)}): the extra singular vectors are not unique, and JAX's rule does "
            "not differentiate them either. Use full_matrices=False (jnp.linalg.svd(a, "
            "full_matrices=False))."
        )
    s, u, vt = P.svd_p.bind(
        a,
        full_matrices=False,
        compute_uv=True,
        subset_by_index=subset_by_index,
        algorithm=algorithm,
    )
    return ((s, u, vt) if compute_uv else (s,)), (s, u, vt)


@primitive_gate(P.svd_p, forward=_svd_forward, params=_SVD_PARAMS, complex=True)
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
    a zero one the last terms' 1/s. A complex A (A = U diag(s) V^H, JAX's rule transposed
    under its convention): U^T Ubar as it is, V^T Vbar as conj(Vt Vbar^T), the transposes in
    F o X + (F o X)^T conjugate ones, dA = conj(U) J conj(V^T), and J gets the transpose of
    the imaginary diagonal JAX's rule gives U's tangent, i Im(diag(U^T Ubar)) / s."""
    s, u, vt = saved
    sbar = g[0]
    got_u, got_v = compute_uv and got[1], compute_uv and got[2]
    s_row = s[..., None, :]  # s_j along each row
    s_col = T(s_row)
    j = (diag(sbar) if got[0] else jnp.zeros(s.shape + s.shape[-1:], s.dtype)).astype(u.dtype)
    if got_u or got_v:
        eye = jnp.eye(s.shape[-1], dtype=s.dtype)
        f = 1 / ((s_row + s_col) * (s_row - s_col) + eye) - eye
    if got_u:
        ubar = mm(T(u), g[1])
        gu = f * ubar
        j = j + s_row * (gu + H(gu))
        if jnp.iscomplexobj(u):  # U's tangent's imaginary diagonal, (dS - dS^H) / 2s
            zero = s == 0
            s_inv = jnp.where(zero, 0, 1 / jnp.where(zero, 1, s))
            j = j + diag(1j * jnp.imag(jnp.diagonal(ubar, axis1=-2, axis2=-1)) * s_inv)
    if got_v:
        gv = f * conj(mm(vt, T(g[2])))
        j = j + s_col * (gv + H(gv))
    cu, cvt = conj(u), conj(vt)
    da = mm(cu, mm(j, cvt))
    m, n = u.shape[-2], vt.shape[-1]
    if got_u and m > n:
        h = g[1] / s_row
        da = da + mm(h + mm(cu, mm(T(u), -h)), cvt)
    if got_v and n > m:
        h = H(g[2]) / s_row
        da = da + mm(cu, H(h + mm(T(vt), mm(cvt, -h))))
    return (da,)


svd.reference = bare(P.svd_p)  # compared with JAX's rule for the primitive as it is bound


@svd.defcases
def _svd_cases(rng, dtype):
    thin = lambda a: jnp.linalg.svd(a, full_matrices=False)
    return [
        case(P.svd_p, thin, spread(rng, (3, 3), dtype), label="square, thin"),
        case(P.svd_p, thin, spread(rng, (5, 3), dtype), label="tall"),
        case(P.svd_p, thin, spread(rng, (3, 5), dtype), label="wide"),
        case(P.svd_p, jnp.linalg.svd, spread(rng, (3, 3), dtype), label="square, full_matrices"),
        case(
            P.svd_p, jnp.linalg.svdvals, spread(rng, (4, 3), dtype), label="singular values alone"
        ),
        case(P.svd_p, thin, spread(rng, (2, 3, 4), dtype), label="batched"),
        case(
            P.svd_p, jnp.linalg.svdvals, cnormal(rng, (3, 4), dtype), label="complex, values alone"
        ),
        case(
            P.svd_p,
            lambda a: jnp.linalg.svd(a, full_matrices=False)[0],
            cnormal(rng, (2, 4, 3), dtype),
            numeric=False,
            label="complex, tall, U",
        ),
        case(
            P.svd_p,
            lambda a: jnp.linalg.svd(a, full_matrices=False)[2],
            cnormal(rng, (3, 4), dtype),
            numeric=False,
            label="complex, wide, V^H",
        ),
    ]


@svd.defkinks
def _svd_kinks(dtype):
    rng = np.random.default_rng(9)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    tied = (2.0 * q).astype(dtype)  # three equal singular values
    rank1 = np.outer(rng.standard_normal(4), rng.standard_normal(3)).astype(dtype)
    zero = spread(rng, (3, 3), dtype)
    zero[:, 2] = 0.0  # square, one zero singular value (and a tall/wide block of zeros below)
    thin = lambda a: jnp.linalg.svd(a, full_matrices=False)
    return [
        case(P.svd_p, thin, tied, label="three equal singular values"),
        case(P.svd_p, jnp.linalg.svdvals, tied, label="equal singular values, values alone"),
        case(P.svd_p, thin, zero, label="square with a zero singular value"),
        case(P.svd_p, thin, rank1, label="tall, rank 1 (zero singular values)"),
        case(P.svd_p, thin, rank1.T.copy(), label="wide, rank 1"),
    ]


# ---- eigh -----------------------------------------------------------------------------------------
def _eigh_forward(a, *, subset_by_index, **params):
    _whole("lax.eigh", subset_by_index, a.shape[-1], a)
    # JAX's rule decomposes the symmetric (Hermitian) part: the same matrix for the symmetric
    # input jnp.linalg.eigh passes (it symmetrizes first), and what JAX computes under its own gradient
    v, w = P.eigh_p.bind((a + H(a)) / 2, subset_by_index=subset_by_index, **params)
    return (v, w), (v, w)


@primitive_gate(P.eigh_p, forward=_eigh_forward, params=_EIGH_PARAMS, complex=True)
def eigh(g, saved, *, got, **params):
    """(V, w) with A = V diag(w) V^H, A (..., n, n) symmetric or Hermitian (the
    eigendecomposition of (A + A^H) / 2, as JAX's rule takes it), w real, in increasing order.
    Local gradient (Giles 2008 sec. 3.1; Seeger et al. 2017), the transpose of JAX's rule
    dV = V (F o V^H dA V), dw = Re diag(V^H dA V):

        F_ij = 1 / (w_j - w_i) (0 on the diagonal)
        dA = conj(V) (diag(wbar) + F o (V^T Vbar)) V^T   (V (...) V^T for a real A)

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
    return (mm(conj(v), mm(inner, T(v))),)


eigh.reference = bare(P.eigh_p)  # JAX's rule for eigh as bound (it symmetrizes inside)


@eigh.defcases
def _eigh_cases(rng, dtype):
    eigh_ = jnp.linalg.eigh
    return [
        case(
            P.eigh_p,
            eigh_,
            symmetric(rng, 4, dtype),
            numeric=False,
            label="4x4 (unstructured steps: the rule's dA is not symmetrized)",
        ),
        dataclasses.replace(
            case(P.eigh_p, eigh_, symmetric(rng, 3, dtype)),
            structure="symmetric",
            label="3x3, stepped symmetrically",
        ),
        dataclasses.replace(
            case(P.eigh_p, jnp.linalg.eigvalsh, symmetric(rng, 3, dtype)),
            structure="symmetric",
            label="eigenvalues alone",
        ),
        dataclasses.replace(
            case(P.eigh_p, lambda a: eigh_(a, UPLO="U"), symmetric(rng, 3, dtype, batch=(2,))),
            structure="symmetric",
            label="batched, upper",
        ),
        case(
            P.eigh_p,
            eigh_,
            hermitian(rng, 3, dtype, batch=(2,)),
            numeric=False,
            label="complex Hermitian, batched",
        ),
        case(
            P.eigh_p,
            jnp.linalg.eigvalsh,
            hermitian(rng, 3, dtype),
            numeric=False,
            label="complex Hermitian, eigenvalues alone",
        ),
    ]


@eigh.defkinks
def _eigh_kinks(dtype):
    tied = np.diag([1.0, 1.0, 2.0]).astype(dtype)
    q, _ = np.linalg.qr(np.random.default_rng(10).standard_normal((3, 3)))
    rotated = (q @ tied @ q.T + (q @ tied @ q.T).T) / 2
    return [
        case(P.eigh_p, jnp.linalg.eigh, tied, label="a repeated eigenvalue, diagonal"),
        case(
            P.eigh_p, jnp.linalg.eigh, rotated.astype(dtype), label="a repeated eigenvalue, rotated"
        ),
        case(P.eigh_p, jnp.linalg.eigh, np.eye(3, dtype=dtype), label="identity"),
    ]


# ---- eig ---------------------------------------------------------------------------------------
_EIG_PARAMS = (
    "compute_left_eigenvectors",
    "compute_right_eigenvectors",
    "enable_eigvec_derivs",
    "implementation",
)


def _eig_forward(
    a,
    *,
    compute_left_eigenvectors,
    compute_right_eigenvectors,
    enable_eigvec_derivs,
    implementation=None,
):
    if (compute_left_eigenvectors or compute_right_eigenvectors) and not enable_eigvec_derivs:
        raise GateError(
            f"rule 'lax.eig' does not differentiate the eigenvectors of {describe(a)} without "
            "enable_eigvec_derivs=True: derivatives of non-symmetric eigenvectors are only valid "
            "under assumptions on the input that cannot be checked, and JAX refuses them too. "
            "Use jnp.linalg.eigvals for the eigenvalues alone, or pass enable_eigvec_derivs=True "
            "to jax.lax.linalg.eig (https://github.com/jax-ml/jax/issues/2748)."
        )
    # the right eigenvectors always, as JAX's rule computes them
    outs = P.eig_p.bind(
        a,
        compute_left_eigenvectors=compute_left_eigenvectors,
        compute_right_eigenvectors=True,
        enable_eigvec_derivs=enable_eigvec_derivs,
        implementation=implementation,
    )
    w, vr = outs[0], outs[-1]
    vl = outs[1] if compute_left_eigenvectors else None
    kept = (
        (w,)
        + ((vl,) if compute_left_eigenvectors else ())
        + ((vr,) if compute_right_eigenvectors else ())
    )
    return kept, (a, w, vl, vr)


def _inv_t(v, x):
    """V^{-T} x, by a solve with V^T."""
    return jnp.linalg.solve(T(v), x)


def _eig_vec_pullback(w, v, wbar, vbar):
    """The transpose of JAX's _eig_vec_jvp (nondegenerate perturbation theory, Giles 2008 sec.
    3.1, and LAPACK's normalisation of each eigenvector: unit 2-norm, its largest component
    real): the cotangent of dA from those of w and V, under JAX's convention.

        forward:  P = V^{-1} dA V,  dw = diag(P),  U = V (F o P),  F_ij = 1 / (w_j - w_i),
                  c_j = -Re(v_j^H u_j) - i Im(u_kj) / Re(v_kj) (k: the largest |v_ij|),
                  dV = U + V diag(c)
        backward: cbar = sum_i Vbar_ij V_ij,  Ubar = Vbar - Re(cbar) conj(V) - i Im(cbar) M / r
                  (M: the mask of the largest components, r = Re(v_kj)),
                  Pbar = diag(wbar) + F o (V^T Ubar),  dA = V^{-T} Pbar V^T"""
    n = w.shape[-1]
    eye = jnp.eye(n, dtype=w.dtype)
    f = 1 / (eye + w[..., None, :] - w[..., :, None]) - eye
    pbar = diag(wbar) if wbar is not None else jnp.zeros(v.shape, v.dtype)
    if vbar is not None:
        k = jnp.argmax(jnp.abs(v), axis=-2)
        mask = (jnp.arange(n)[:, None] == k[..., None, :]).astype(v.dtype)
        r = jnp.real(jnp.sum(mask * v, axis=-2))
        cbar = jnp.sum(vbar * v, axis=-2)[..., None, :]
        ubar = vbar - jnp.real(cbar) * jnp.conj(v) - 1j * (jnp.imag(cbar) / r[..., None, :]) * mask
        pbar = pbar + f * mm(T(v), ubar)
    return _inv_t(v, mm(pbar, T(v)))


@primitive_gate(P.eig_p, forward=_eig_forward, params=_EIG_PARAMS, complex=True)
def eig(g, saved, *, compute_left_eigenvectors, compute_right_eigenvectors, got, **params):
    """(w[, VL][, VR]) with A VR = VR diag(w) and VL^H A = diag(w) VL^H, A (..., n, n) real or
    complex, w complex (jnp.linalg.eigvals, and jnp.linalg.eig with JAX's
    enable_eigvec_derivs=True).  Local gradient, the transpose of JAX's rule under its
    convention: of the eigenvalues (Giles 2008 sec. 3.1)

        dA = V^{-T} diag(wbar) V^T     (its real part for a real A)

    and of the eigenvectors, as LAPACK normalizes them (each of unit 2-norm, its largest
    component real), the transpose of nondegenerate perturbation theory (_eig_vec_pullback);
    the left eigenvectors are the right ones of A^H (eigenvalues conj(w)). Repeated
    eigenvalues make F infinite, as in JAX's rule."""
    a, w, vl, vr = saved
    g = list(g)
    wbar = g[0] if got[0] else None
    vlbar = g[1] if compute_left_eigenvectors and got[1] else None
    vrbar = g[-1] if compute_right_eigenvectors and got[-1] else None
    if vrbar is None and vlbar is None:  # eigenvalues alone: JAX's rule for eigvals
        da = _inv_t(vr, wbar[..., :, None] * T(vr)) if wbar is not None else jnp.zeros_like(vr)
    else:
        da = _eig_vec_pullback(w, vr, wbar, vrbar)
        if vlbar is not None:  # dVL is the eigenvectors' tangent of A^H with conj(w)
            da = da + H(_eig_vec_pullback(jnp.conj(w), vl, None, vlbar))
    return (da if jnp.iscomplexobj(a) else jnp.real(da).astype(a.dtype),)


eig.reference = bare(P.eig_p)  # JAX's rule for eig as bound (the forward adds VR)


@eig.defcases
def _eig_cases(rng, dtype):
    eig_ = lambda left, right: (
        lambda a: lax.linalg.eig(
            a,
            compute_left_eigenvectors=left,
            compute_right_eigenvectors=right,
            enable_eigvec_derivs=True,
        )
    )
    real = (rng.standard_normal((3, 3)) + 2.0 * np.diag([1.0, 2.0, 3.0])).astype(dtype)
    # JAX's rule for the eigenvalues alone computes the eigenvectors without
    # enable_eigvec_derivs: it has no second derivative there (second_order=False)
    return [
        case(
            P.eig_p,
            eig_(False, True),
            cnormal(rng, (3, 3), dtype),
            label="right eigenvectors, complex",
        ),
        case(P.eig_p, eig_(True, True), real, label="left and right eigenvectors, real"),
        case(
            P.eig_p,
            jnp.linalg.eigvals,
            real,
            second_order=False,
            label="eigenvalues of a real matrix",
        ),
        case(
            P.eig_p,
            jnp.linalg.eigvals,
            cnormal(rng, (2, 3, 3), dtype),
            second_order=False,
            label="eigenvalues, complex, batched",
        ),
    ]


eig.defkinks(smooth=True)
