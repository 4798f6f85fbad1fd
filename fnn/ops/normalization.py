"""Normalization and dropout gates. Features are the LAST axis: (N, D) or NHWC (N, H, W, C).

    batch_norm  normalizes each feature over the batch (all axes but the last);
    layer_norm  normalizes each example over its features (the last axis);
    dropout     zeroes inputs at random and scales the rest by 1/(1 - rate) (inverted dropout).

Both norms compute xhat = (x - mean) * inv_std, y = gamma * xhat + beta, and their VJPs use the
fused formula (with m the number of values averaged, sums over the same axes as the mean)

    dx = inv_std / m * (m * gx - sum(gx) - xhat * sum(gx * xhat)),   gx = g * gamma,

instead of chaining the gradients of mean, variance and division.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn.autodiff.case_values import normal, uniform
from fnn.autodiff.gate import Case, defgate
from fnn.errors import GateError, describe


def _check_features(gate, x, **params):
    """Every array in `params` must have shape (D,), D = x.shape[-1]."""
    if np.ndim(x) < 1:
        raise GateError(f"gate '{gate}': x must have a feature axis (last), got {describe(x)}")
    for name, p in params.items():
        if np.shape(p) != (x.shape[-1],):
            raise GateError(
                f"gate '{gate}': {name} must have shape ({x.shape[-1]},) to match "
                f"the last axis of x {describe(x)}, got {describe(p)}"
            )


def _per_feature(p, ndim):
    """A (D,) parameter reshaped to (1, ..., 1, D) to multiply an array of rank `ndim`."""
    return p.reshape((1,) * (ndim - 1) + p.shape)


# ---- batch norm ------------------------------------------------------------------------------
@defgate
def batch_norm(x, gamma, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5):
    """Batch normalization over all axes but the last: y = gamma * xhat + beta.

    x: (N, D) or (N, H, W, D); gamma, beta, running_mean, running_var: (D,). Returns the tuple
    (y, new_running_mean, new_running_var) in both modes.
    train=True: xhat = (x - mu) / sqrt(var + eps) with the batch mean mu and the biased batch
    variance var (divided by m = x.size // D); new_running = momentum * running + (1 - momentum)
    * batch stat, for the mean and the (biased) variance alike.
    train=False: xhat uses running_mean and running_var, which are returned unchanged.
    Local gradients: dbeta = sum(g), dgamma = sum(g * xhat) (over all axes but the last); in train
    mode dx = inv_std / m * (m * gx - sum(gx) - xhat * sum(gx * xhat)) with gx = g * gamma, in
    eval mode dx = g * gamma * inv_std. The running stats are state, not parameters: they get no
    gradient (None), and the running-stat outputs pass none back (the forward wraps them in
    lax.stop_gradient, so JAX's vjp of the forward agrees).

    Args:
        x: (N, D) or (N, H, W, D).
        gamma: the scale (D,).
        beta: the shift (D,).
        running_mean: the running mean (D,).
        running_var: the running (biased) variance (D,).
        train: normalize with the batch statistics and update the running ones; False: use the
            running statistics.
        momentum: the running statistics' momentum.
        eps: added to the variance.

    Returns:
        (y, new_running_mean, new_running_var).

    Raises:
        fnn.GateError: x is not (N, D) or (N, H, W, D).
    """
    if np.ndim(x) < 2:
        raise GateError(f"gate 'batch_norm': x must be (N, D) or (N, H, W, D), got {describe(x)}")
    _check_features(
        "batch_norm", x, gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var
    )
    axes = tuple(range(x.ndim - 1))
    running_mean, running_var = lax.stop_gradient(running_mean), lax.stop_gradient(running_var)
    if train:
        mean = jnp.mean(x, axis=axes)
        xc = x - _per_feature(mean, x.ndim)
        var = jnp.mean(xc * xc, axis=axes)
        new_mean = lax.stop_gradient(momentum * running_mean + (1 - momentum) * mean)
        new_var = lax.stop_gradient(momentum * running_var + (1 - momentum) * var)
    else:
        xc = x - _per_feature(running_mean, x.ndim)
        var, new_mean, new_var = running_var, running_mean, running_var
    inv_std = _per_feature(lax.rsqrt(var + eps), x.ndim)
    xhat = xc * inv_std
    y = _per_feature(gamma, x.ndim) * xhat + _per_feature(beta, x.ndim)
    return (y, new_mean.astype(running_mean.dtype), new_var.astype(running_var.dtype)), (
        xhat,
        gamma,
        inv_std,
        x.dtype,
        beta.dtype,
    )


@batch_norm.defvjp
def batch_norm_vjp(g, saved, *, train, momentum=0.9, eps=1e-5, needs):
    gy = g[0]  # g[1], g[2] (running stats) pass no gradient back
    xhat, gamma, inv_std, x_dtype, beta_dtype = saved
    axes = tuple(range(gy.ndim - 1))
    dbeta = jnp.sum(gy, axis=axes, keepdims=True)
    dgamma = jnp.sum(gy * xhat, axis=axes, keepdims=True)
    dx = None
    if needs[0] and train:
        m = gy.size // gy.shape[-1]
        dx = (_per_feature(gamma, gy.ndim) * inv_std / m) * (m * gy - dbeta - xhat * dgamma)
    elif needs[0]:
        dx = gy * (_per_feature(gamma, gy.ndim) * inv_std)
    dgamma, dbeta = dgamma.reshape(gamma.shape), dbeta.reshape(gamma.shape)
    return (
        None if dx is None else dx.astype(x_dtype),
        dgamma.astype(gamma.dtype) if needs[1] else None,
        dbeta.astype(beta_dtype) if needs[2] else None,
        None,
        None,
    )


@batch_norm.defcases
def _batch_norm_cases(rng, dtype):
    cases = []
    for shape in [(6, 4), (3, 3, 3, 2)]:
        d = shape[-1]
        for train in (True, False):
            args = (
                normal(rng, shape, dtype, scale=2.0) + 0.5,
                1 + normal(rng, (d,), dtype, 0.3),
                normal(rng, (d,), dtype),
                normal(rng, (d,), dtype, 0.3),
                uniform(rng, (d,), dtype, 0.5, 2.0),
            )
            # numeric=False: central differences see the running-stat outputs depend on x and
            # the running stats, which are state without gradient; tests/test_conv_norm.py
            # checks y numerically against x, gamma and beta.
            cases.append(
                Case(
                    args,
                    {"train": train, "momentum": 0.8},
                    numeric=False,
                    label=f"{shape} train={train}",
                )
            )
    return cases


batch_norm.defkinks(smooth=True)


# ---- layer norm ------------------------------------------------------------------------------
def _row_sum(a):
    """sum(a, axis=-1, keepdims=True), accumulated in float32 at least (bf16 rows)."""
    return jnp.sum(a, axis=-1, keepdims=True, dtype=jnp.promote_types(a.dtype, jnp.float32))


def _row_dot(a, v):
    """sum(a * v, axis=-1, keepdims=True) for a (D,) vector v: a matrix-vector product,
    accumulated in float32 at least."""
    acc = jnp.promote_types(a.dtype, jnp.float32)
    return lax.dot_general(a, v, (((a.ndim - 1,), (0,)), ((), ())), preferred_element_type=acc)[
        ..., None
    ]


@defgate
def layer_norm(x, gamma, beta, *, eps=1e-5):
    """Layer normalization over the last axis: y = gamma * (x - mu) / sqrt(var + eps) + beta.

    x: (..., D); gamma, beta: (D,); mu and the biased var are per example (over D).
    Local gradients: dbeta = sum(g), dgamma = sum(g * xhat) over all axes but the last;
    dx = inv_std / D * (D * gx - sum(gx) - xhat * sum(gx * xhat)) with gx = g * gamma, sums over
    the last axis.

    Args:
        x: (..., D).
        gamma: the scale (D,).
        beta: the shift (D,).
        eps: added to the variance.

    Returns:
        y, shaped like x.
    """
    _check_features("layer_norm", x, gamma=gamma, beta=beta)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    xc = x - mean
    inv_std = lax.rsqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + eps)
    xhat = xc * inv_std
    y = _per_feature(gamma, x.ndim) * xhat + _per_feature(beta, x.ndim)
    return y, (xhat, gamma, inv_std, beta.dtype)


@layer_norm.defvjp
def layer_norm_vjp(g, saved, *, eps=1e-5, needs):
    xhat, gamma, inv_std, beta_dtype = saved
    axes = tuple(range(g.ndim - 1))
    dx = dgamma = dbeta = None
    if needs[0]:
        # row sums of gx = g * gamma and gx * xhat; gx is its own product, not g * xhat shared
        # with dgamma's column sums (XLA then fuses the row and the column reductions badly:
        # 2x slower on (32, 128, 256) on CPU)
        d = g.shape[-1]
        gx = g * _per_feature(gamma, g.ndim)
        sum_gx = _row_dot(g, gamma)
        sum_gx_xhat = _row_dot(g * xhat, gamma)
        dx = (inv_std / d) * (d * gx - sum_gx - xhat * sum_gx_xhat)
        dx = dx.astype(xhat.dtype)
    if needs[1]:
        dgamma = jnp.sum(g * xhat, axis=axes).astype(gamma.dtype)
    if needs[2]:
        dbeta = jnp.sum(g, axis=axes).astype(beta_dtype)
    return dx, dgamma, dbeta


@layer_norm.defcases
def _layer_norm_cases(rng, dtype):
    return [
        Case(
            (
                normal(rng, s, dtype, scale=2.0) + 0.5,
                1 + normal(rng, s[-1:], dtype, 0.3),
                normal(rng, s[-1:], dtype),
            ),
            label=str(s),
        )
        for s in [(5,), (4, 6), (2, 3, 3, 4)]
    ]


layer_norm.defkinks(smooth=True)


# ---- dropout ---------------------------------------------------------------------------------
@defgate
def dropout(x, key, *, rate, train=True):
    """Inverted dropout: out = x * mask / (1 - rate), mask ~ Bernoulli(1 - rate) of x's shape.

    x: any shape; key: a JAX PRNG key (jax.random.PRNGKey(seed), uint32 (2,), or
    jax.random.key(seed)); the same key gives the same mask. With train=False or rate == 0 the
    gate is the identity. Local gradient: mask / (1 - rate) for x (the mask kept by the forward);
    the key gets no gradient (None).

    Args:
        x: the input (any shape).
        key: a JAX PRNG key.
        rate: the probability of dropping an entry, 0 <= rate < 1.
        train: False: the identity.

    Returns:
        x * mask / (1 - rate), shaped like x.

    Raises:
        fnn.GateError: rate is not in [0, 1).
    """
    if not 0 <= rate < 1:
        raise GateError(
            f"gate 'dropout': rate must satisfy 0 <= rate < 1, got {rate!r} (x {describe(x)})"
        )
    if not train or rate == 0:
        return x, None
    keep = jax.random.bernoulli(key, 1 - rate, np.shape(x))
    return jnp.where(keep, x / (1 - rate), jnp.zeros((), x.dtype)), keep


@dropout.defvjp
def dropout_vjp(g, keep, *, rate, train=True):
    if keep is None:
        return g, None
    return jnp.where(keep, g / (1 - rate), jnp.zeros((), g.dtype)), None


@dropout.defcases
def _dropout_cases(rng, dtype):
    def key():
        return np.asarray(jax.random.PRNGKey(int(rng.integers(2**31))))

    return [
        Case((normal(rng, (8, 5), dtype), key()), {"rate": 0.5}, label="(8, 5) rate=0.5"),
        Case((normal(rng, (2, 4, 4, 3), dtype), key()), {"rate": 0.2}, label="NHWC rate=0.2"),
        Case(
            (normal(rng, (4, 3), dtype), key()),
            {"rate": 0.5, "train": False},
            label="eval: identity",
        ),
        Case((normal(rng, (4, 3), dtype), key()), {"rate": 0.0}, label="rate=0: identity"),
    ]


dropout.defkinks(smooth=True)
