"""Helpers the linear-algebra rules share: matrix transposes and products over leading batch
axes, triangles kept by a select (as JAX's rules keep them, so a NaN outside the triangle is
dropped, not multiplied by 0) and conjugates. (Their test matrices are in
fnn.autodiff.case_values.)

Products are taken at HIGHEST precision, as JAX's rules take them (on a GPU the default may
round float32 operands to TF32)."""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax

mm = functools.partial(jnp.matmul, precision=lax.Precision.HIGHEST)


def T(x):
    """The transpose of the last two axes."""
    return jnp.swapaxes(x, -1, -2)


def H(x):
    """The conjugate transpose of the last two axes (the transpose of a real matrix)."""
    return jnp.conj(T(x)) if jnp.iscomplexobj(x) else T(x)


def conj(x):
    """The complex conjugate (a real array as it is)."""
    return jnp.conj(x) if jnp.iscomplexobj(x) else x


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
