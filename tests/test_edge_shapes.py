"""Edge shapes: empty arrays (any dimension 0), 0-d inputs with every valid axis spelling,
batch 1 and size-1 maps. Each gate works as JAX's own function does on them, values and
gradients, or raises a clear GateError where JAX raises too. hypothesis draws the shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fnn
from fnn import ops

SETTINGS = settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
shapes = st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple)

UNARY = {
    "exp": jnp.exp,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "negative": jnp.negative,
    "softplus": jax.nn.softplus,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "relu": jax.nn.relu,
}
BINARY = {
    "add": jnp.add,
    "subtract": jnp.subtract,
    "multiply": jnp.multiply,
    "divide": jnp.divide,
    "maximum": jnp.maximum,
}
REDUCTIONS = {
    "sum": jnp.sum,
    "mean": jnp.mean,
    "logsumexp": jax.nn.logsumexp,
    "softmax": jax.nn.softmax,
    "log_softmax": jax.nn.log_softmax,
    "max": jnp.max,
}


def values(shape, seed=0, offset=0.0):
    return jnp.asarray(np.random.default_rng(seed).uniform(0.5, 1.5, shape) + offset)


def same_as_jax(gate_fn, jax_fn, *args):
    """Outputs and gradients (random cotangent) equal; or both raise."""
    try:
        want, pull = jax.vjp(jax_fn, *args)
    except (TypeError, ValueError, IndexError):
        with pytest.raises((fnn.GateError, TypeError, ValueError)):
            gate_fn(*args)
        return
    got, pullback = fnn.vjp(gate_fn, *args)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)
    ct = jnp.asarray(np.random.default_rng(1).standard_normal(want.shape), want.dtype)
    for a, b in zip(pullback(ct), pull(ct)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)


@SETTINGS
@given(shapes, st.sampled_from(sorted(UNARY)))
def test_unary_gates_on_edge_shapes(shape, name):
    same_as_jax(getattr(ops, name), UNARY[name], values(shape))


@SETTINGS
@given(shapes, st.sampled_from(sorted(BINARY)), st.data())
def test_binary_gates_on_edge_shapes(shape, name, data):
    other = data.draw(st.sampled_from([shape, shape[1:], (), tuple(1 for _ in shape)]))
    same_as_jax(getattr(ops, name), BINARY[name], values(shape), values(other, 2, 0.1))


@SETTINGS
@given(shapes, st.sampled_from(sorted(REDUCTIONS)), st.data())
def test_reductions_on_edge_shapes(shape, name, data):
    ndim = len(shape)
    spellings = [None] + list(range(-ndim, ndim)) + ([0, -1] if ndim == 0 else [])
    axis = data.draw(st.sampled_from(spellings))
    x = values(shape)
    gate = lambda x: getattr(ops, name)(x, axis=axis)
    same_as_jax(gate, lambda x: REDUCTIONS[name](x, axis=axis), x)


@SETTINGS
@given(shapes, st.data())
def test_shape_gates_on_edge_shapes(shape, data):
    x = values(shape)
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    same_as_jax(lambda x: ops.transpose(x, axes=perm), lambda x: jnp.transpose(x, perm), x)
    same_as_jax(lambda x: ops.reshape(x, shape=(-1,)), lambda x: jnp.reshape(x, (-1,)), x)
    same_as_jax(
        lambda x: ops.broadcast_to(x, shape=(2,) + shape),
        lambda x: jnp.broadcast_to(x, (2,) + shape),
        x,
    )
    if shape:
        same_as_jax(
            lambda x: ops.concatenate(x, x, axis=0), lambda x: jnp.concatenate([x, x], axis=0), x
        )


def test_conv_and_pool_on_empty_and_size_one_maps():
    w = values((3, 3, 3, 2))
    for x_shape in [(2, 0, 4, 3), (1, 1, 1, 3), (0, 5, 5, 3), (2, 2, 4, 3)]:
        x = values(x_shape)
        same_as_jax(
            lambda x, w: ops.conv2d(x, w),
            lambda x, w: jax.lax.conv_general_dilated(
                x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
            ),
            x,
            w,
        )
        same_as_jax(
            lambda x, w: ops.conv2d(x, w, padding="SAME"),
            lambda x, w: jax.lax.conv_general_dilated(
                x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            ),
            x,
            w,
        )
    one = values((1, 1, 1, 3))
    np.testing.assert_allclose(ops.max_pool2d(one, window=1), one)


def test_zero_d_axes_refused_like_jax_and_pytrees():
    s = jnp.asarray(1.5)
    for name in ("softmax", "log_softmax", "logsumexp", "sum"):
        for axis in (0, -1):
            with pytest.raises(fnn.GateError, match="axis.*0 dims"):
                getattr(ops, name)(s, axis=axis)
        assert getattr(ops, name)(s, axis=None).shape == ()
    tree = {"foo": jnp.ones(2), "bar": [jnp.zeros(3)]}
    out = ops.stop_gradient(tree)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(tree)
    g = fnn.grad(lambda t: jnp.sum(ops.stop_gradient(t)["foo"]) + jnp.sum(t["foo"]))(tree)
    np.testing.assert_array_equal(g["foo"], 1.0)
