"""The worked examples of the CS231n lecture "Backpropagation and Neural Networks"."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import ops


def test_simple_graph_x_plus_y_times_z():
    # f(x, y, z) = (x + y) z at x=-2, y=5, z=-4: q = 3, f = -12; df/dx = df/dy = z = -4, df/dz = q = 3
    f = lambda x, y, z: (x + y) * z
    val, grads = fnn.value_and_grad(f, argnums=(0, 1, 2))(-2.0, 5.0, -4.0)
    assert val == -12.0
    np.testing.assert_allclose(grads, (-4.0, -4.0, 3.0))
    np.testing.assert_allclose(grads, jax.grad(f, argnums=(0, 1, 2))(-2.0, 5.0, -4.0))


def sigmoid_neuron(w, x):
    """f(w, x) = 1 / (1 + exp(-(w0 x0 + w1 x1 + w2))), built from elementary gates."""
    return 1.0 / (1.0 + ops.exp(-(w[0] * x[0] + w[1] * x[1] + w[2])))


def test_sigmoid_neuron_2d():
    w = jnp.array([2.0, -3.0, -3.0])
    x = jnp.array([-1.0, -2.0])
    out = sigmoid_neuron(w, x)
    np.testing.assert_allclose(out, 0.73, atol=5e-3)
    dw, dx = fnn.grad(sigmoid_neuron, argnums=(0, 1))(w, x)
    # the lecture's numbers: local gradient of the sigmoid gate (1 - 0.73) * 0.73 = 0.2
    np.testing.assert_allclose(dw, [-0.2, -0.39, 0.2], atol=5e-3)
    np.testing.assert_allclose(dx, [0.39, -0.59], atol=5e-3)
    ref = jax.grad(sigmoid_neuron, argnums=(0, 1))(w, x)
    np.testing.assert_allclose(dw, ref[0], rtol=1e-6)
    np.testing.assert_allclose(dx, ref[1], rtol=1e-6)
    # the sigmoid gate as one node gives the same gradient
    fused = lambda w, x: ops.sigmoid(w[0] * x[0] + w[1] * x[1] + w[2])
    np.testing.assert_allclose(fnn.grad(fused)(w, x), dw, rtol=1e-6)


def test_gate_patterns_add_distributes_mul_swaps_max_routes_copy_adds():
    g = jnp.array(2.0)
    # add gate distributes: both inputs get the upstream gradient
    _, pull = fnn.vjp(ops.add, jnp.array(3.0), jnp.array(-1.0))
    assert [float(v) for v in pull(g)] == [2.0, 2.0]
    # mul gate swaps: dx = g * y, dy = g * x
    _, pull = fnn.vjp(ops.multiply, jnp.array(3.0), jnp.array(-4.0))
    assert [float(v) for v in pull(g)] == [-8.0, 6.0]
    # max gate routes: all of g to the larger input, none to the other
    _, pull = fnn.vjp(ops.maximum, jnp.array(4.0), jnp.array(5.0))
    assert [float(v) for v in pull(g)] == [0.0, 2.0]
    # copy gate adds: a value used twice gets the sum of both gradients
    dx = fnn.grad(lambda x: x * 3.0 + x * 4.0)(1.5)
    assert float(dx) == 7.0


def test_vectorized_example_norm_of_W_times_x():
    # f(x, W) = ||W x||^2; df/dW = 2 q x^T, df/dx = 2 W^T q with q = W x
    W = jnp.array([[0.1, 0.5], [-0.3, 0.8]])
    x = jnp.array([0.2, 0.4])
    f = lambda W, x: ops.sum((W @ x) ** 2)
    dW, dx = fnn.grad(f, argnums=(0, 1))(W, x)
    np.testing.assert_allclose(dW, [[0.088, 0.176], [0.104, 0.208]], rtol=1e-5)
    np.testing.assert_allclose(dx, [-0.112, 0.636], rtol=1e-5)


@pytest.mark.parametrize("example", ["simple", "neuron", "norm"])
def test_lecture_examples_match_jax_in_float64(example, x64):
    rng = np.random.default_rng(0)
    if example == "simple":
        f, args = (lambda x, y, z: (x + y) * z), tuple(rng.standard_normal(3))
    elif example == "neuron":
        f, args = sigmoid_neuron, (rng.standard_normal(3), rng.standard_normal(2))
    else:
        f, args = (
            (lambda W, x: ops.sum((W @ x) ** 2)),
            (rng.standard_normal((3, 3)), rng.standard_normal(3)),
        )
    nums = tuple(range(len(args)))
    mine = fnn.grad(f, argnums=nums)(*args)
    ref = jax.grad(f, argnums=nums)(*args)
    for a, b in zip(mine, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12)
