"""Model level: fnn.grad equals jax.grad on whole networks written with fnn's gates, in float64,
eagerly, under jit, and per example under vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import ops

ACTS = {"relu": ops.relu, "sigmoid": ops.sigmoid, "tanh": ops.tanh}


def mlp_params(rng, sizes):
    return [
        {"w": rng.standard_normal((m, n)) / np.sqrt(m), "b": 0.1 * rng.standard_normal(n)}
        for m, n in zip(sizes[:-1], sizes[1:])
    ]


def mlp_loss(params, x, y, act="relu"):
    h = x
    for layer in params[:-1]:
        h = ACTS[act](ops.affine(h, layer["w"], layer["b"]))
    scores = ops.affine(h, params[-1]["w"], params[-1]["b"])
    return ops.softmax_cross_entropy(scores, y) + ops.l2_penalty(params[0]["w"], scale=1e-3)


def cnn_params(rng):
    return {
        "conv": rng.standard_normal((3, 3, 2, 4)) * 0.3,
        "cb": 0.1 * rng.standard_normal(4),
        "w": rng.standard_normal((4 * 4 * 4, 3)) * 0.1,
        "b": np.zeros(3),
    }


def cnn_loss(p, x, y):
    h = ops.relu(ops.conv2d(x, p["conv"], stride=1, padding="SAME") + p["cb"])
    h = ops.max_pool2d(h, window=2)
    return ops.softmax_cross_entropy(ops.affine(h, p["w"], p["b"]), y)


MODELS = {
    "2-layer relu": (
        lambda r: mlp_params(r, [6, 10, 3]),
        lambda p, x, y: mlp_loss(p, x, y, "relu"),
        (6,),
    ),
    "3-layer relu": (
        lambda r: mlp_params(r, [6, 10, 8, 3]),
        lambda p, x, y: mlp_loss(p, x, y, "relu"),
        (6,),
    ),
    "2-layer sigmoid": (
        lambda r: mlp_params(r, [6, 10, 3]),
        lambda p, x, y: mlp_loss(p, x, y, "sigmoid"),
        (6,),
    ),
    "3-layer tanh": (
        lambda r: mlp_params(r, [6, 10, 8, 3]),
        lambda p, x, y: mlp_loss(p, x, y, "tanh"),
        (6,),
    ),
    "conv-relu-pool-affine": (cnn_params, cnn_loss, (8, 8, 2)),
}


def setup(name, n=5):
    rng = np.random.default_rng(0)
    make, loss, shape = MODELS[name]
    params = jax.tree_util.tree_map(jnp.asarray, make(rng))
    x = jnp.asarray(rng.standard_normal((n,) + shape))
    y = jnp.asarray(rng.integers(0, 3, n))
    return params, loss, x, y


def assert_trees_close(a, b, rtol=1e-10):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=1e-13)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_gradient_equals_jax_grad(name, x64):
    params, loss, x, y = setup(name)
    ref = jax.grad(loss)(params, x, y)
    assert_trees_close(fnn.grad(loss)(params, x, y), ref)
    assert_trees_close(jax.jit(fnn.grad(loss))(params, x, y), ref)
    v1, _ = fnn.value_and_grad(loss)(params, x, y)
    np.testing.assert_allclose(v1, loss(params, x, y), rtol=1e-12)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_per_example_gradients_under_vmap(name, x64):
    params, loss, x, y = setup(name, n=4)
    one = lambda p, xi, yi: loss(p, xi[None], yi[None])
    mine = jax.jit(jax.vmap(fnn.grad(one), in_axes=(None, 0, 0)))(params, x, y)
    ref = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, x, y)
    assert_trees_close(mine, ref)
