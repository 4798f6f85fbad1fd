"""Linear algebra in real programs (issue 23): a Gaussian-process marginal likelihood, a
Glow-style flow with an invertible 1x1 mixing matrix, spectral and nuclear norm regularisers,
pinv and lstsq, an orthogonal parametrisation by QR, an eigvalsh loss, expm,
multivariate_normal.logpdf, conjugate gradients, det, eigenvectors and a tridiagonal solve:
fnn.grad equals jax.grad to 1e-10 in float64, eagerly and under jit, and to second order. Also: what jax.grad gives
at a degenerate spectrum where only eigenvalues are used (finite), and what fnn refuses."""

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import pytest
from jax import lax
from jax.scipy.sparse.linalg import cg
from jax.scipy.stats import multivariate_normal

import fnn
from fnn.check.numeric import rel_error


# ---- the programs -------------------------------------------------------------------------------
def gp_nll(p, x, y):
    """Negative log marginal likelihood of a GP with an RBF kernel: Cholesky, triangular
    solves, slogdet."""
    d2 = jnp.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
    k = jnp.exp(2 * p["log_sf"]) * jnp.exp(-0.5 * d2 / jnp.exp(2 * p["log_ls"]))
    k = k + (jnp.exp(2 * p["log_sn"]) + 1e-6) * jnp.eye(x.shape[0])
    chol = jnp.linalg.cholesky(k)
    a = jsl.solve_triangular(chol, y, lower=True)
    alpha = jsl.solve_triangular(chol.T, a, lower=False)
    return 0.5 * y @ alpha + 0.5 * jnp.linalg.slogdet(k)[1] + 0.5 * y.size * jnp.log(2 * jnp.pi)


def glow_nll(p, x):
    """A Glow-style flow: invertible 1x1 mixing (log|det W| by slogdet), an affine coupling
    layer, a standard normal base; the mixing's inverse reconstructs the input."""
    z = x @ p["w"]
    z1, z2 = jnp.split(z, 2, axis=-1)
    h = jnp.tanh(z1 @ p["a"] + p["b"])
    log_s = jnp.tanh(h @ p["s"])
    z2 = z2 * jnp.exp(log_s) + h @ p["t"]
    out = jnp.concatenate([z1, z2], axis=-1)
    logdet = x.shape[0] * jnp.linalg.slogdet(p["w"])[1] + jnp.sum(log_s)
    nll = 0.5 * jnp.sum(out**2) - logdet
    recon = jnp.concatenate([z1, z @ jnp.eye(4)[:, 2:]], axis=-1) @ jnp.linalg.inv(p["w"])
    return nll / x.shape[0] + jnp.mean((recon - x) ** 2)


def spectral_reg(w, x):
    return jnp.mean(jnp.tanh(x @ w) ** 2) + 0.1 * jnp.linalg.norm(w, ord=2)


def nuclear_reg(w, x):
    return jnp.mean((x @ w) ** 2) + 0.1 * jnp.linalg.norm(w, ord="nuc")


def least_squares(a, b):
    x_pinv = jnp.linalg.pinv(a) @ b
    x_lstsq = jnp.linalg.lstsq(a, b)[0]
    return jnp.sum(jnp.sin(x_pinv)) + jnp.sum(x_lstsq**2)


def orthogonal(m, x):
    """An orthogonal parametrisation: Q of QR(M), the signs of R's diagonal folded in."""
    q, r = jnp.linalg.qr(m)
    q = q * jnp.sign(jnp.diagonal(r))[None, :]
    return jnp.sum(jnp.cos(x @ q))


def eigvalsh_loss(a):
    s = a @ a.T
    w = jnp.linalg.eigvalsh(s)
    return jnp.sum(w**2) - jnp.log(w[0]) + jnp.max(w)


def eigenvectors(a):
    w, v = jnp.linalg.eigh(a + a.T)
    return jnp.sum(v[:, -1] ** 3) + jnp.sum(w * jnp.arange(w.size))


def expm_loss(a, v):
    return jnp.sum(jsl.expm(0.5 * a) @ v)


def mvn_loss(p, x):
    cov = p["l"] @ p["l"].T + 0.5 * jnp.eye(3)
    return -jnp.sum(multivariate_normal.logpdf(x, p["mu"], cov))


def cg_loss(a, b):
    m = a.T @ a + jnp.eye(a.shape[1])
    x, _ = cg(lambda v: m @ v, b, tol=1e-14, maxiter=200)
    return jnp.sum(x**2) + jnp.sum(jnp.linalg.solve(m, b))


def det_svd(a):
    u, s, vt = jnp.linalg.svd(a, full_matrices=False)
    return jnp.linalg.det(a) + jnp.sum(u[:, 0] ** 2 * vt[0]) + jnp.sum(s**3)


def spline(d, b):
    """A tridiagonal solve (a smoothing spline's system), its diagonal differentiated."""
    off = 0.3 * jnp.ones_like(d)
    x = lax.linalg.tridiagonal_solve(off.at[0].set(0.0), d, off.at[-1].set(0.0), b[:, None])
    return jnp.sum(x**2)


def _programs():
    rng = np.random.default_rng(0)
    n = lambda *s: jnp.asarray(rng.standard_normal(s))
    x6 = n(6, 2)
    return {
        "gp marginal likelihood": (
            gp_nll,
            (
                {
                    "log_ls": jnp.asarray(0.1),
                    "log_sf": jnp.asarray(-0.2),
                    "log_sn": jnp.asarray(-1.0),
                },
                x6,
                jnp.sin(3 * x6[:, 0]),
            ),
        ),
        "glow flow": (
            glow_nll,
            (
                {
                    "w": n(4, 4) + 2 * jnp.eye(4),
                    "a": 0.5 * n(2, 3),
                    "b": 0.1 * n(3),
                    "s": 0.5 * n(3, 2),
                    "t": 0.5 * n(3, 2),
                },
                n(5, 4),
            ),
        ),
        "spectral norm": (spectral_reg, (n(4, 3), n(5, 4))),
        "nuclear norm": (nuclear_reg, (n(4, 3), n(5, 4))),
        "pinv and lstsq": (least_squares, (n(5, 3), n(5))),
        "orthogonal by qr": (orthogonal, (n(4, 4), n(3, 4))),
        "eigvalsh": (eigvalsh_loss, (n(4, 4),)),
        "eigenvectors": (eigenvectors, (n(4, 4),)),
        "expm": (expm_loss, (n(3, 3), n(3))),
        "multivariate_normal.logpdf": (mvn_loss, ({"l": n(3, 3), "mu": n(3)}, n(4, 3))),
        "cg and solve": (cg_loss, (n(4, 3), n(3))),
        "det and svd": (det_svd, (n(3, 3),)),
        "tridiagonal solve": (spline, (2.0 + jnp.abs(n(5)), n(5))),
    }


def _argnums(args):
    return tuple(range(len(args))) if len(args) > 1 else 0


def _assert_same(mine, ref, what):
    assert jax.tree_util.tree_structure(mine) == jax.tree_util.tree_structure(ref), what
    err = rel_error(mine, ref)
    assert err <= 1e-10, (what, err)
    for a in jax.tree_util.tree_leaves(mine):
        assert np.all(np.isfinite(a)), what


@pytest.mark.parametrize("name", sorted(_programs()))
def test_program_gradient_is_jax(name, x64):
    """fnn.grad == jax.grad (every differentiated argument), eagerly and under jit."""
    f, args = _programs()[name]
    argnums = _argnums(args)
    ref = jax.jit(jax.grad(f, argnums=argnums))(*args)
    _assert_same(jax.jit(fnn.grad(f, argnums=argnums))(*args), ref, f"{name}, jit")
    _assert_same(fnn.grad(f, argnums=argnums)(*args), ref, f"{name}, eager")


@pytest.mark.parametrize(
    "name",
    ["gp marginal likelihood", "cg and solve", "orthogonal by qr", "det and svd", "eigenvectors"],
)
def test_second_order_through_fnn_backward(name, x64):
    """fnn.grad of a function of fnn.grad (fnn differentiating its own linear-algebra
    backward: triangular and LU solves, transposed custom_linear_solve) == the same with
    jax.grad, under jit."""
    f, args = _programs()[name]
    total = lambda grad: (
        lambda a: sum(jnp.sum(jnp.sin(g)) for g in jax.tree_util.tree_leaves(grad(f)(a, *args[1:])))
    )
    mine = jax.jit(fnn.grad(total(fnn.grad)))(args[0])
    ref = jax.jit(jax.grad(total(jax.grad)))(args[0])
    _assert_same(mine, ref, f"{name}, second order")


# ---- degenerate spectra: jax.grad's values ---------------------------------------------------------
def test_repeated_eigenvalues_values_alone_are_finite_as_in_jax(x64):
    """eigvalsh and svdvals at repeated values: no cotangent reaches the vectors, whose 1 /
    (w_j - w_i) terms JAX leaves out: the gradient is finite, and fnn's is JAX's. Where the
    vectors are used, both are NaN in the same places."""
    eye = jnp.eye(3)
    values = lambda a: jnp.sum(jnp.linalg.eigvalsh(a) * jnp.arange(1.0, 4.0))
    svals = lambda a: jnp.sum(jnp.linalg.svd(a, full_matrices=False)[1] * jnp.arange(1.0, 4.0))
    vectors = lambda a: jnp.sum(jnp.linalg.eigh(a)[1] * jnp.arange(9.0).reshape(3, 3))
    for f in (values, svals, vectors):
        ref = jax.jit(jax.grad(f))(2 * eye)
        mine = jax.jit(fnn.grad(f))(2 * eye)
        np.testing.assert_allclose(mine, ref, rtol=1e-12, equal_nan=True)
    assert np.all(np.isfinite(fnn.grad(values)(2 * eye)))
    assert np.all(np.isfinite(fnn.grad(svals)(2 * eye)))
    assert np.any(np.isnan(fnn.grad(vectors)(2 * eye)))


def test_singular_matrices_give_jax_values(x64):
    """det at a rank-deficient matrix (its custom rule's cofactor path, through lu and
    triangular_solve) and slogdet / inv at a singular one (infinities): JAX's values."""
    a = jnp.asarray([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]])
    for f in (
        jnp.linalg.det,
        lambda a: jnp.linalg.slogdet(a)[1],
        lambda a: jnp.sum(jnp.linalg.inv(a)),
    ):
        ref = jax.jit(jax.grad(f))(a)
        np.testing.assert_allclose(jax.jit(fnn.grad(f))(a), ref, rtol=1e-12, equal_nan=True)


# ---- refused, with the reason ---------------------------------------------------------------------
def test_what_fnn_refuses_is_named(x64):
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 5)))
    cases = [
        (
            lambda x: jnp.sum(jsl.qr(x, pivoting=True, mode="economic")[1]),
            r"rule 'lax.qr' does not handle pivoting=True for a wide matrix \(f64\[3,5\]\)",
        ),
        (
            lambda x: jnp.sum(jnp.linalg.svd(x)[0]),
            r"rule 'lax.svd' does not handle full_matrices=True with a non-square matrix",
        ),
        (
            lambda x: jnp.sum(
                lax.custom_linear_solve(lambda v: x[:, :3] @ v, x[0, :3], lambda mv, b: b / 2.0)
            ),
            r"rule 'lax.custom_linear_solve': the solve has no transpose_solve",
        ),
        # eigenvectors of a non-symmetric matrix without enable_eigvec_derivs: JAX refuses too
        (
            lambda x: jnp.sum(jnp.abs(jnp.linalg.eig(x[:, :3])[1])),
            r"rule 'lax.eig' does not differentiate the eigenvectors of f64\[3,3\] without "
            r"enable_eigvec_derivs=True",
        ),
    ]
    for f, message in cases:
        with pytest.raises(fnn.GateError, match=message):
            fnn.grad(f)(x)
