"""Helpers the linear-algebra rules share: matrix transposes and products over leading batch
axes, triangles kept by a select (as JAX's rules keep them, so a NaN outside the triangle is
dropped, not multiplied by 0), test matrices, and the refusal of complex values.

Products are taken at HIGHEST precision, as JAX's rules take them (on a GPU the default may
round float32 operands to TF32)."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn.errors import GateError, describe

mm = functools.partial(jnp.matmul, precision=lax.Precision.HIGHEST)


def T(x):
    """The transpose of the last two axes."""
    return jnp.swapaxes(x, -1, -2)


def tril(x, k: int = 0):
    """The lower triangle (on and below diagonal k), zeros elsewhere, by a select."""
    n, m = x.shape[-2:]
    return jnp.where(jnp.tri(n, m, k, dtype=bool), x, jnp.zeros((), x.dtype))


def triu(x, k: int = 0):
    """The upper triangle (on and above diagonal k), zeros elsewhere, by a select."""
    n, m = x.shape[-2:]
    return jnp.where(jnp.tri(n, m, k - 1, dtype=bool), jnp.zeros((), x.dtype), x)


def diag(v):
    """The diagonal matrices of the vectors v (..., k) -> (..., k, k)."""
    k = v.shape[-1]
    return jnp.where(jnp.eye(k, dtype=bool), v[..., None, :], jnp.zeros((), v.dtype))


def real_only(rule: str, *arrays):
    """Refuse complex arrays, naming the rule: these rules are written for real matrices."""
    for a in arrays:
        if a is not None and jnp.issubdtype(jnp.result_type(a), jnp.complexfloating):
            raise GateError(f"rule '{rule}' is written for real matrices; got {describe(a)} "
                            "(complex linear algebra has no hand-written rule yet: use jax.grad)")


# ---- test matrices ------------------------------------------------------------------------------
def spd(rng, n, dtype, batch=()):
    """Symmetric positive definite matrices, well conditioned."""
    m = rng.standard_normal(batch + (n, n))
    return (m @ np.swapaxes(m, -1, -2) / n + np.eye(n)).astype(dtype)


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
