"""The gate checker perturbs an input within the structure its case declares (Case.structure):
a rule that is only right for symmetric (positive definite, orthogonal, sorted) inputs passes
there, and fails when the case does not say so, since plain central differences step out of the
structure."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.check.gates import check_gate
from fnn.check.numeric import differences, project


def _lower(a):
    """The symmetric matrix whose lower triangle is a's (as eigh and cholesky read their input)."""
    return jnp.tril(a) + jnp.swapaxes(jnp.tril(a, -1), -1, -2)


@fnn.defgate
def trace_cube(a):
    """tr(S^3), S the symmetric matrix read from a's lower triangle.  Local gradient (as a
    symmetric matrix, right for symmetric a only): 3 S @ S."""
    s = _lower(a)
    return jnp.sum(s * (s @ s)), s


@trace_cube.defvjp
def trace_cube_vjp(g, s):
    return (3.0 * g * (s @ s),)


@fnn.defgate
def logdet(a):
    """log det(a) of a positive definite a, by its Cholesky factor (the lower triangle).  Local
    gradient (right for symmetric a only): inv(a)."""
    chol = jax.lax.linalg.cholesky(a, symmetrize_input=False)  # reads the lower triangle
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol))), a


@logdet.defvjp
def logdet_vjp(g, a):
    return (g * jnp.linalg.inv(_lower(a)),)


@fnn.defgate
def weighted_sorted(x):
    """sum(w * sort(x)), w = 1, 2, ...: for a sorted x, sum(w * x).  Local gradient (right
    where x is sorted): w."""
    w = jnp.arange(1.0, 1.0 + x.shape[-1])
    return jnp.sum(w * jnp.sort(x)), w


@weighted_sorted.defvjp
def weighted_sorted_vjp(g, w):
    return (g * w,)


@fnn.defgate
def inverse_by_transpose(q, b):
    """sum(b * inv(q)) for an orthogonal q, computed as sum(b * q.T).  Local gradient (of
    sum(b * inv(q)), the same function on orthogonal q only): -inv(q).T b inv(q).T = -q b q;
    for b: inv(q) = q.T."""
    return jnp.sum(b * q.T), (q, b)


@inverse_by_transpose.defvjp
def inverse_by_transpose_vjp(g, saved):
    q, b = saved
    return (-g * (q @ b @ q), g * q.T)


def _spd(rng, n):
    m = rng.standard_normal((n, n))
    return m @ m.T + n * np.eye(n)


def _cases(structure):
    rng = np.random.default_rng(0)
    sym = rng.standard_normal((4, 4))
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    close = np.sort(rng.standard_normal(5))
    close[2] = close[1] + 1e-7  # closer than the checker's step: a plain step reorders x
    return {
        "symmetric": (trace_cube, fnn.Case(((sym + sym.T) / 2,), structure=structure)),
        "positive definite": (logdet, fnn.Case((_spd(rng, 3),), structure=structure)),
        "orthogonal": (
            inverse_by_transpose,
            fnn.Case((q, rng.standard_normal((3, 3))), structure=(structure,)),
        ),
        "sorted": (weighted_sorted, fnn.Case((close,), structure=structure)),
    }


@pytest.mark.parametrize("structure", ["symmetric", "positive definite", "orthogonal", "sorted"])
def test_checker_perturbs_within_the_declared_structure(structure):
    gate, case = _cases(structure)[structure]
    gate.defcases(lambda rng, dtype: [case])
    report = check_gate(structure, gate)
    f64 = [c for c in report.cases if c.dtype == "float64"]
    assert report.ok, report.verdict
    assert f64[0].vs_numeric is not None and f64[0].vs_numeric <= 1e-6


@pytest.mark.parametrize("structure", ["symmetric", "positive definite", "orthogonal", "sorted"])
def test_without_the_structure_central_differences_fail(structure):
    gate, case = _cases(None)[structure]
    gate.defcases(lambda rng, dtype: [case])
    report = check_gate(structure, gate)
    assert not report.ok
    assert any("vs numeric" in p for p in report.problems), report.problems


def test_structured_directions_and_projection(x64):
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.standard_normal((3, 3)))
    g = jnp.asarray(rng.standard_normal((3, 3)))
    f = lambda x: jnp.sum(g * x)  # linear: its differences are <g, direction> exactly
    f_plus, f_minus, hp, hm = differences(f, a, np.arange(9), 1e-3, structure="symmetric")
    np.testing.assert_allclose(
        ((f_plus - f_minus) / (hp + hm)).reshape(3, 3), project(g, a, "symmetric"), rtol=1e-9
    )
    np.testing.assert_allclose(project(g, a, "symmetric"), (g + g.T) / 2)
    q, _ = jnp.linalg.qr(a)
    tangent = project(g, q, "orthogonal")  # q K with K skew
    k = q.T @ tangent
    np.testing.assert_allclose(k, -k.T, atol=1e-12)


def test_unknown_structure_is_refused():
    with pytest.raises(fnn.GateError, match="structure 'diagonal'"):
        fnn.Case((np.eye(2),), structure="diagonal")
