"""Forward accuracy of the activation gates against float64 references (scipy.special where it
has the function), over the float32 range including the tails, at JAX's own tolerances; and
dtype promotion as JAX does it for integer and low-precision inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from fnn import ops

# 10,000 points over [-10, 10] (as JAX's gelu test) plus the tails up to 1e4 and tiny values
GRID = np.concatenate(
    [np.linspace(-10, 10, 10_000), -np.logspace(-30, 4, 200), np.logspace(-30, 4, 200)]
).astype(np.float32)
X64 = GRID.astype(np.float64)

REFERENCES = {  # gate (float32 in, float32 out) -> float64 reference of the same function
    "sigmoid": (ops.sigmoid, special.expit(X64)),
    "tanh": (ops.tanh, np.tanh(X64)),
    "relu": (ops.relu, np.maximum(X64, 0)),
    "leaky_relu": (ops.leaky_relu, np.where(X64 > 0, X64, 0.01 * X64)),
    "elu": (ops.elu, np.where(X64 > 0, X64, np.expm1(np.minimum(X64, 0)))),
    "softplus": (ops.softplus, np.logaddexp(X64, 0)),
    "gelu": (ops.gelu, X64 * special.ndtr(X64)),
    "gelu_tanh": (
        lambda x: ops.gelu(x, approximate=True),
        # x (1 + tanh u) / 2 = x sigmoid(2u), in the form that does not cancel
        X64 * special.expit(2 * np.sqrt(2 / np.pi) * (X64 + 0.044715 * X64**3)),
    ),
    "silu": (ops.silu, X64 * special.expit(X64)),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_activation_forward_accuracy(name):
    gate, ref = REFERENCES[name]
    got = np.asarray(jax.jit(gate)(jnp.asarray(GRID)), np.float64)
    assert got.dtype == np.float64 and np.all(np.isfinite(got)), name
    # float32 rounding of the result, plus the float32 rounding of the input (x's relative
    # error 6e-8 times the function's condition number x f'(x)/f(x), below 2e-5 here)
    np.testing.assert_allclose(
        got, ref, rtol=2e-5, atol=1e-35, err_msg=name
    )  # (XLA flushes denormals)


def test_exact_gelu_in_the_left_tail():
    x = jnp.asarray([-3.0, -4.0, -6.0, -10.0], jnp.float32)
    got = np.asarray(ops.gelu(x), np.float64)
    ref = np.asarray(x, np.float64) * special.ndtr(np.asarray(x, np.float64))
    np.testing.assert_allclose(got, ref, rtol=2e-5)
    assert got[2] < 0  # -5.9e-9, not -0.0


def test_reductions_forward_accuracy():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 50)) * 30).astype(np.float32)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(
        ops.logsumexp(jnp.asarray(x), axis=1), special.logsumexp(x64, axis=1), rtol=2e-6
    )
    np.testing.assert_allclose(
        ops.softmax(jnp.asarray(x), axis=1), special.softmax(x64, axis=1), rtol=2e-5, atol=1e-30
    )
    np.testing.assert_allclose(
        ops.log_softmax(jnp.asarray(x), axis=1),
        special.log_softmax(x64, axis=1),
        rtol=2e-6,
        atol=1e-5,
    )


JAX_FUNCTIONS = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "softplus": jax.nn.softplus,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "exp": jnp.exp,
    "log": jnp.log,
    "sqrt": jnp.sqrt,
    "abs": jnp.abs,
    "negative": jnp.negative,
    "softmax": jax.nn.softmax,
    "log_softmax": jax.nn.log_softmax,
    "logsumexp": jax.nn.logsumexp,
    "sum": jnp.sum,
    "mean": jnp.mean,
    "max": jnp.max,
}


@pytest.mark.parametrize("x64_on", [False, True])
@pytest.mark.parametrize("dtype", ["int32", "int8", "uint8", "bfloat16", "float16"])
def test_dtype_promotion_follows_jax(dtype, x64_on):
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", x64_on)
    try:
        x = jnp.asarray(np.array([1, 2, 0, 3]), dtype)
        for name, fn in JAX_FUNCTIONS.items():
            try:
                want = fn(x).dtype
            except TypeError:  # JAX refuses this dtype: fnn raises a clear error instead
                with pytest.raises((TypeError, ValueError)):
                    getattr(ops, name)(x)
                continue
            assert getattr(ops, name)(x).dtype == want, (name, dtype, x64_on)
    finally:
        jax.config.update("jax_enable_x64", old)
