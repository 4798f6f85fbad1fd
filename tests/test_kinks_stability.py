"""Kinks and ties, tested explicitly (the documented values, which are JAX's, and parity with
jax.grad on the same model code; every rule at its kinks: tests/test_kinks.py), and stability of
the softmax family at |x| = 1e4 in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import ops


def test_max_reduction_ties_split_evenly_as_jax():
    x = jnp.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    g = fnn.grad(lambda x: ops.sum(ops.max(x, axis=1)))(x)
    np.testing.assert_allclose(g, [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
    np.testing.assert_array_equal(g, jax.grad(lambda x: jnp.sum(jnp.max(x, axis=1)))(x))
    g_all = fnn.grad(lambda x: ops.max(x))(jnp.array([[5.0, 1.0], [5.0, 5.0]]))
    np.testing.assert_allclose(g_all, [[1 / 3, 0], [1 / 3, 1 / 3]], rtol=1e-6)


def test_maximum_and_minimum_ties_split_evenly_as_jax():
    x = jnp.array([1.0, 2.0, 3.0])
    y = jnp.array([1.0, 0.0, 3.0])
    dx, dy = fnn.grad(lambda x, y: ops.sum(ops.maximum(x, y)), argnums=(0, 1))(x, y)
    np.testing.assert_array_equal(dx, [0.5, 1, 0.5])
    np.testing.assert_array_equal(dy, [0.5, 0, 0.5])
    dx, dy = fnn.grad(lambda x, y: ops.sum(ops.minimum(x, y)), argnums=(0, 1))(x, y)
    np.testing.assert_array_equal(dx, [0.5, 0, 0.5])
    np.testing.assert_array_equal(dy, [0.5, 1, 0.5])
    ref = jax.grad(lambda x, y: jnp.sum(jnp.minimum(x, y)), argnums=(0, 1))(x, y)
    np.testing.assert_array_equal(dx, ref[0])
    np.testing.assert_array_equal(dy, ref[1])


KINKS = {
    "relu at 0": (
        lambda x: ops.sum(ops.relu(x) * jnp.arange(1.0, 4.0)),
        jnp.array([0.0, 1.0, -1.0]),
    ),
    "leaky_relu at 0": (
        lambda x: ops.sum(ops.leaky_relu(x, alpha=0.1)),
        jnp.array([0.0, 2.0, -2.0]),
    ),
    "elu at 0": (lambda x: ops.sum(ops.elu(x)), jnp.array([0.0, 1.0, -1.0])),
    "abs at 0": (lambda x: ops.sum(ops.abs(x)), jnp.array([0.0, 1.0, -1.0])),
    "maximum tie": (lambda x: ops.sum(ops.maximum(x, 0.0)), jnp.array([0.0, 1.0, -1.0])),
    "minimum tie": (lambda x: ops.sum(ops.minimum(x, 0.0)), jnp.array([0.0, 1.0, -1.0])),
    "relu6 at 0 and 6": (lambda x: ops.sum(ops.relu6(x)), jnp.array([0.0, 6.0, 3.0])),
    "jax.nn.relu6 at 0 and 6": (lambda x: jnp.sum(jax.nn.relu6(x)), jnp.array([0.0, 6.0, 3.0])),
    "jax.nn.softplus at 0": (lambda x: jnp.sum(jax.nn.softplus(x)), jnp.array([0.0, 1.0])),
    "jnp.abs at 0": (lambda x: jnp.sum(jnp.abs(x)), jnp.array([0.0, 1.0, -1.0])),
    "jnp.hypot at 0": (lambda x: jnp.hypot(x[0], x[1]), jnp.array([0.0, 0.0])),
    "cummax ties": (
        lambda x: jnp.sum(jax.lax.cummax(x) * jnp.arange(4.0)),
        jnp.array([1.0, 1.0, 0.0, 2.0]),
    ),
    "svm margin 0": (lambda s: ops.svm_loss(s, jnp.array([0])), jnp.array([[1.0, 0.0, -5.0]])),
}


@pytest.mark.parametrize("name", sorted(KINKS))
def test_fnn_grad_equals_jax_grad_at_kinks(name):
    """fnn's rules give JAX's derivative at the kink (tests/test_kinks.py: every rule)."""
    f, x = KINKS[name]
    np.testing.assert_array_equal(fnn.grad(f)(x), jax.grad(f)(x))


def test_documented_kink_values():
    """JAX's conventions, which fnn's docstrings and README state."""
    assert float(fnn.grad(ops.relu)(0.0)) == 0.0
    assert float(fnn.grad(ops.abs)(0.0)) == 1.0
    assert float(fnn.grad(lambda x: ops.leaky_relu(x, alpha=0.1))(0.0)) == 1.0
    assert float(fnn.grad(lambda x: ops.elu(x, alpha=0.5))(0.0)) == 0.5
    assert fnn.grad(lambda x: ops.maximum(x, 1.0))(1.0) == 0.5
    assert float(fnn.grad(ops.relu6)(6.0)) == 0.0


@pytest.mark.parametrize(
    "name", ["log_softmax", "softmax", "logsumexp", "mse", "sigmoid", "softplus"]
)
def test_stable_at_1e4_in_float32(name):
    x = jnp.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], jnp.float32)
    f = {
        "log_softmax": lambda x: ops.sum(ops.log_softmax(x) * jnp.array([1.0, 0.0, 0.5])),
        "softmax": lambda x: ops.sum(ops.softmax(x) * jnp.array([1.0, 2.0, 3.0])),
        "logsumexp": lambda x: ops.sum(ops.logsumexp(x, axis=1)),
        "mse": lambda x: ops.mse(x, jnp.zeros_like(x)),
        "sigmoid": lambda x: ops.sum(ops.sigmoid(x)),
        "softplus": lambda x: ops.sum(ops.softplus(x)),
    }[name]
    value, g = fnn.value_and_grad(f)(x)
    assert np.isfinite(value) and np.all(np.isfinite(g)), (value, g)
    np.testing.assert_allclose(g, jax.grad(f)(x), rtol=1e-6, atol=1e-6)
