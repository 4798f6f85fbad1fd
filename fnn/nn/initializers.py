"""Weight initializers: `init(key, shape, dtype=float32) -> array`, selectable per layer by name.

Fans are those of a Dense kernel (in, out) or a conv kernel HWIO (kh, kw, in, out):
fan_in = kh*kw*in, fan_out = kh*kw*out.

    glorot, xavier   normal, std = sqrt(2 / (fan_in + fan_out))          Glorot & Bengio 2010
    he, kaiming      normal, std = sqrt(2 / fan_in), for ReLU nets         He et al. 2015
    lecun            normal, std = sqrt(1 / fan_in)   (the lecture's "randn / sqrt(fan_in)")
    small            0.01 * randn                     (the lecture's first, small-Gaussian try)
    orthogonal       a random orthogonal matrix (QR of a Gaussian one, signs fixed so it is
                     uniform), per square block of a recurrent (H, k*H) kernel  Saxe et al. 2014
    glorot_uniform, he_uniform   uniform with the same variance as their normal versions
    zeros, ones
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a kernel: (in, out), or HWIO for convolutions."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _draw(sample, key, shape, dtype):
    # Drawn flat, then reshaped: XLA compiles a 1-D threefry draw several times faster than an
    # N-d one (seconds per conv kernel on 2 CPU cores), and initialization happens eagerly.
    return sample(key, (math.prod(shape),), dtype).reshape(shape)


def normal(std: float) -> Callable:
    """N(0, std**2) entries."""

    def init(key, shape, dtype=jnp.float32):
        return std * _draw(jax.random.normal, key, tuple(shape), dtype)

    return init


def variance_scaling(scale: float, mode: str, distribution: str = "normal") -> Callable:
    """Entries with variance scale / n, n = fan_in, fan_out or their mean ("fan_avg")."""

    def init(key, shape, dtype=jnp.float32):
        fan_in, fan_out = fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        std = math.sqrt(scale / n)
        if distribution == "uniform":
            limit = math.sqrt(3.0) * std
            return limit * (2 * _draw(jax.random.uniform, key, tuple(shape), dtype) - 1)
        return std * _draw(jax.random.normal, key, tuple(shape), dtype)

    return init


def orthogonal(scale: float = 1.0) -> Callable:
    """scale * Q with Q orthogonal and uniformly distributed (Saxe et al. 2014; Mezzadri 2007):
    Q R = a Gaussian matrix, signs of R's diagonal moved into Q. A (rows, cols) shape gets
    orthonormal rows or columns (whichever is fewer); (rows, k * rows), a recurrent kernel of k
    gates, gets one orthogonal (rows, rows) block per gate."""

    def square(key, n, dtype):
        q, r = jnp.linalg.qr(jax.random.normal(key, (n, n), jnp.float32))
        return (q * jnp.sign(jnp.diagonal(r))).astype(dtype)

    def init(key, shape, dtype=jnp.float32):
        shape = tuple(shape)
        if len(shape) != 2:
            raise ValueError(f"orthogonal initializer: needs a 2-d (rows, cols) shape, got {shape}")
        rows, cols = shape
        if cols % rows == 0:  # k square blocks side by side: one orthogonal matrix per gate
            blocks = [square(k, rows, dtype) for k in jax.random.split(key, cols // rows)]
            return scale * jnp.concatenate(blocks, axis=1)
        n = max(rows, cols)
        return scale * square(key, n, dtype)[:rows, :cols]

    return init


def zeros(key, shape, dtype=jnp.float32):
    return jnp.zeros(tuple(shape), dtype)


def ones(key, shape, dtype=jnp.float32):
    return jnp.ones(tuple(shape), dtype)


glorot_normal = variance_scaling(1.0, "fan_avg")
glorot_uniform = variance_scaling(1.0, "fan_avg", "uniform")
he_normal = variance_scaling(2.0, "fan_in")
he_uniform = variance_scaling(2.0, "fan_in", "uniform")
lecun_normal = variance_scaling(1.0, "fan_in")
small_gaussian = normal(0.01)

INITIALIZERS = {
    "glorot": glorot_normal,
    "xavier": glorot_normal,
    "glorot_uniform": glorot_uniform,
    "he": he_normal,
    "kaiming": he_normal,
    "he_uniform": he_uniform,
    "lecun": lecun_normal,
    "small": small_gaussian,
    "orthogonal": orthogonal(),
    "zeros": zeros,
    "ones": ones,
}
"""The weight initializers by name (what `init=` and `--init` accept): name ->
`init(key, shape, dtype) -> array`."""


def get_initializer(init: str | Callable) -> Callable:
    """An initializer by name (see INITIALIZERS) or a callable `init(key, shape, dtype)`.

    Args:
        init: a name in INITIALIZERS, or an initializer (returned as it is).

    Returns:
        The initializer, `init(key, shape, dtype=jnp.float32) -> array`.

    Raises:
        ValueError: `init` is neither callable nor a name in INITIALIZERS.
    """
    if callable(init):
        return init
    try:
        return INITIALIZERS[init]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown initializer {init!r}; choose one of "
            f"{', '.join(sorted(INITIALIZERS))} or pass a function "
            "init(key, shape, dtype)"
        ) from None
