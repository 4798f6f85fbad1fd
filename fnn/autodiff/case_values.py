"""Helpers that build test points (`Case`s) for the gates: random arrays away from kinks,
well-conditioned test matrices, the special points of kink cases. In the core, beside `Case`,
so that the structural gates (fnn.autodiff.structural) and the gates of fnn.ops make their
cases with the same helpers."""

import numpy as np

from fnn.autodiff.gate import Case

SHAPES = ((), (5,), (3, 4), (2, 1, 3))  # scalar, vector, matrix, a size-1 dim


def normal(rng: np.random.Generator, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def complex_dtype(dtype):
    """The complex dtype of a float dtype's precision: float64 -> complex128, float32 (and
    narrower) -> complex64; a complex dtype unchanged."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        return dtype
    return np.dtype(np.complex128 if dtype == np.float64 else np.complex64)


def cnormal(rng: np.random.Generator, shape, dtype, scale=1.0):
    """Complex samples of `dtype`'s precision, standard-normal real and imaginary parts."""
    z = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return np.asarray(scale * z).astype(complex_dtype(dtype))


def cdistinct(rng: np.random.Generator, shape, dtype, gap=0.05):
    """Complex values whose real parts are pairwise `gap` apart (no ties in JAX's
    lexicographic order of complex numbers: max, sort), standard-normal imaginary parts."""
    z = distinct(rng, shape, np.float64, gap) + 1j * rng.standard_normal(shape)
    return np.asarray(z).astype(complex_dtype(dtype))


def uniform(rng: np.random.Generator, shape, dtype, lo, hi):
    return rng.uniform(lo, hi, shape).astype(dtype)


def positive(rng: np.random.Generator, shape, dtype):
    """Values in [0.5, 2): away from 0, where log, sqrt, rsqrt and 1/x have their poles."""
    return uniform(rng, shape, dtype, 0.5, 2.0)


def away_from(rng: np.random.Generator, shape, dtype, point=0.0, gap=0.1, scale=1.0):
    """Normal samples pushed at least `gap` away from `point` (a kink), keeping their sign."""
    x = scale * rng.standard_normal(shape)
    x = np.where(x >= 0, x + gap, x - gap) + point
    return np.asarray(x).astype(dtype)


def distinct(rng: np.random.Generator, shape, dtype, gap=0.05):
    """Values with pairwise gaps of at least `gap` (no ties for max/min/maxout), shuffled."""
    n = int(np.prod(shape)) if shape else 1
    x = (np.arange(n) - n / 2) * gap * (1 + rng.uniform(0.2, 0.8))
    x = rng.permutation(x) + 0.01 * gap
    return x.reshape(shape).astype(dtype)


def unary_gate_cases(make=normal, shapes=SHAPES, kwargs=({},)):
    """Cases of a one-input gate: `make(rng, shape, dtype)` at each shape, for each kwargs."""

    def cases(rng, dtype):
        return [
            Case((make(rng, s, dtype),), dict(kw), label=f"{s}{kw or ''}")
            for kw in kwargs
            for s in shapes
        ]

    return cases


# ---- test matrices (of the linear-algebra gates) ------------------------------------------------
def spd(rng, n, dtype, batch=()):
    """Symmetric positive definite matrices, well conditioned."""
    m = rng.standard_normal(batch + (n, n))
    return (m @ np.swapaxes(m, -1, -2) / n + np.eye(n)).astype(dtype)


def hpd(rng, n, dtype, batch=()):
    """Hermitian positive definite complex matrices (of `dtype`'s precision), well
    conditioned."""
    m = rng.standard_normal(batch + (n, n)) + 1j * rng.standard_normal(batch + (n, n))
    return (m @ np.conj(np.swapaxes(m, -1, -2)) / n + np.eye(n)).astype(complex_dtype(dtype))


def hermitian(rng, n, dtype, batch=(), gap=0.3):
    """Hermitian complex matrices whose eigenvalues are at least `gap` apart."""
    z = rng.standard_normal(batch + (n, n)) + 1j * rng.standard_normal(batch + (n, n))
    q, _ = np.linalg.qr(z)
    w = np.sort(rng.standard_normal(batch + (n,)), axis=-1) + gap * np.arange(n)
    a = (q * w[..., None, :]) @ np.conj(np.swapaxes(q, -1, -2))
    return ((a + np.conj(np.swapaxes(a, -1, -2))) / 2).astype(complex_dtype(dtype))


def symmetric(rng, n, dtype, batch=(), gap=0.3):
    """Symmetric matrices whose eigenvalues are at least `gap` apart."""
    q, _ = np.linalg.qr(rng.standard_normal(batch + (n, n)))
    w = np.sort(rng.standard_normal(batch + (n,)), axis=-1)
    w = w + gap * np.arange(n)
    a = (q * w[..., None, :]) @ np.swapaxes(q, -1, -2)
    return ((a + np.swapaxes(a, -1, -2)) / 2).astype(dtype)


def spread(rng, shape, dtype, gap=0.3):
    """Matrices whose singular values are at least `gap` apart and away from 0."""
    *batch, m, n = shape
    k = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal(tuple(batch) + (m, k)))
    v, _ = np.linalg.qr(rng.standard_normal(tuple(batch) + (n, k)))
    s = 0.5 + gap * np.arange(k)[::-1] + 0.1 * rng.uniform(size=tuple(batch) + (k,))
    return ((u * s[..., None, :]) @ np.swapaxes(v, -1, -2)).astype(dtype)


# ---- kink cases (Gate.defkinks): points where a derivative is a convention ----------------------
SPECIAL = (0.0, -0.0, 1.0, -1.0, 0.5, -2.0, 6.0, np.inf, -np.inf, np.nan)


def special_points(points=SPECIAL, kwargs=({},)):
    """Kink cases of a one-input elementwise gate: each special point (0 of both signs, +-1,
    6, infinities, NaN), for each kwargs."""
    return lambda dtype: [
        Case((np.asarray(points, dtype),), dict(kw), label=f"special points{kw or ''}")
        for kw in kwargs
    ]
