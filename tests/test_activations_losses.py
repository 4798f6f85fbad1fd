"""Activation and loss gates beyond the generic registry suite (tests/test_gates.py): the value
of the gradient at kinks (JAX's), maxout ties, stability at |x| = 1e4 in float32, the fused loss
gradients against their closed forms, and the errors for bad labels and shapes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import ops
from fnn.ops import activations as A
from fnn.ops import losses as L


def vjp_ones(gate, x, **static):
    """Gradient of sum(gate(x)) by fnn's hand-written VJP: (out, dx)."""
    out, pullback = fnn.vjp(lambda v: gate(v, **static), x)
    return out, pullback(jnp.ones_like(out))[0]


# ---- kinks ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "gate, static, slope_at_0",
    [
        (A.relu, {}, 0.0),
        (A.leaky_relu, {}, 1.0),  # jax.nn.leaky_relu's x >= 0 branch
        (A.leaky_relu, {"alpha": 0.2}, 1.0),
        (A.elu, {"alpha": 0.5}, 0.5),
        (A.relu6, {}, 0.0),
    ],
)
def test_gradient_at_exactly_zero_is_jax_value(gate, static, slope_at_0):
    x = jnp.array([-1.0, 0.0, 2.0], jnp.float32)
    out, dx = vjp_ones(gate, x, **static)
    assert out[1] == 0.0
    assert dx[1] == np.float32(slope_at_0)
    assert dx[2] == 1.0


def test_relu_routes_gradient_by_sign():
    x = jnp.array([[-2.0, 0.0, 3.0], [1e-7, -1e-7, 0.5]], jnp.float32)
    _, dx = vjp_ones(A.relu, x)
    np.testing.assert_array_equal(dx, [[0, 0, 1], [1, 0, 1]])


def test_maxout_groups_consecutive_entries():
    x = jnp.arange(12.0, dtype=jnp.float32).reshape(2, 6) * jnp.array([1, -1, 1, -1, 1, -1.0])
    out = A.maxout(x, pieces=3)  # groups [0:3], [3:6] of each row
    np.testing.assert_array_equal(out, [[2.0, 4.0], [8.0, 10.0]])
    out0 = A.maxout(x.T, pieces=3, axis=0)
    np.testing.assert_array_equal(out0, out.T)


def test_maxout_tie_splits_evenly_and_preserves_gradient():
    x = jnp.array([[1.0, 3.0, 3.0, 0.0, 2.0, 2.0, 2.0, 2.0]], jnp.float32)
    g = jnp.array([[5.0, 7.0]], jnp.float32)
    out, pullback = fnn.vjp(lambda v: A.maxout(v, pieces=4), x)
    (dx,) = pullback(g)
    np.testing.assert_array_equal(out, [[3.0, 2.0]])
    np.testing.assert_array_equal(dx, [[0, 2.5, 2.5, 0, 1.75, 1.75, 1.75, 1.75]])  # as jnp.max
    np.testing.assert_array_equal(dx.reshape(1, 2, 4).sum(-1), g)  # total gradient preserved


def test_maxout_bad_pieces_raise():
    with pytest.raises(fnn.GateError, match=r"maxout.*f32\[2,5\].*pieces=2"):
        A.maxout(jnp.zeros((2, 5), jnp.float32), pieces=2)
    with pytest.raises(fnn.GateError, match="maxout"):
        A.maxout(jnp.zeros((), jnp.float32), pieces=1)


# ---- closed forms -----------------------------------------------------------------------------
def test_gelu_matches_jax_nn(x64):
    x = jnp.linspace(-6.0, 6.0, 41)
    np.testing.assert_allclose(A.gelu(x), jax.nn.gelu(x, approximate=False), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(
        A.gelu(x, approximate=True), jax.nn.gelu(x, approximate=True), rtol=1e-13, atol=1e-13
    )


def test_softmax_cross_entropy_fused_gradient(x64, rng):
    logits = rng.standard_normal((6, 5)) * 3
    labels = rng.integers(0, 5, size=6)
    loss, dlogits = fnn.value_and_grad(L.softmax_cross_entropy)(logits, labels)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(5)[labels]
    np.testing.assert_allclose(loss, -np.mean(np.log(p[np.arange(6), labels])), rtol=1e-13)
    np.testing.assert_allclose(dlogits, (p - onehot) / 6, rtol=1e-12, atol=1e-15)


def _svm_naive(scores, labels, delta):
    """CS231n's svm_loss_naive with loops, as the reference."""
    n, c = scores.shape
    loss, ds = 0.0, np.zeros_like(scores)
    for i in range(n):
        for j in range(c):
            if j == labels[i]:
                continue
            margin = scores[i, j] - scores[i, labels[i]] + delta
            if margin > 0:
                loss += margin
                ds[i, j] += 1
                ds[i, labels[i]] -= 1
    return loss / n, ds / n


@pytest.mark.parametrize("delta", [1.0, 0.3])
def test_svm_loss_matches_naive_loops(x64, rng, delta):
    scores = rng.standard_normal((7, 4)) * 2
    labels = rng.integers(0, 4, size=7)
    loss, ds = fnn.value_and_grad(lambda s: L.svm_loss(s, labels, delta=delta))(scores)
    ref_loss, ref_ds = _svm_naive(scores, labels, delta)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-13)
    np.testing.assert_allclose(ds, ref_ds, rtol=1e-13, atol=1e-15)


def test_mse_and_l2_penalty_gradients(x64, rng):
    pred, target = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    dpred, dtarget = fnn.grad(L.mse, argnums=(0, 1))(pred, target)
    np.testing.assert_allclose(dpred, 2 * (pred - target) / 12, rtol=1e-13)
    np.testing.assert_allclose(dtarget, -2 * (pred - target) / 12, rtol=1e-13)
    # a constant target (not differentiated), of another dtype: dpred keeps pred's dtype
    d32 = fnn.grad(lambda p: L.mse(p, target))(pred.astype(np.float32))
    assert d32.dtype == jnp.float32
    w = rng.standard_normal((5, 2))
    value, dw = fnn.value_and_grad(lambda v: L.l2_penalty(v, scale=0.1))(w)
    np.testing.assert_allclose(value, 0.1 * np.sum(w * w), rtol=1e-13)
    np.testing.assert_allclose(dw, 0.2 * w, rtol=1e-13)


# ---- stability at |x| = 1e4 in float32 -----------------------------------------------------------
BIG = jnp.array([-1e4, -100.0, 0.5, 100.0, 1e4], jnp.float32)


@pytest.mark.parametrize("gate", [ops.sigmoid, A.softplus, ops.tanh, A.silu, A.gelu, A.elu])
def test_activations_finite_at_large_inputs(gate):
    out, dx = vjp_ones(gate, BIG)
    assert out.dtype == dx.dtype == jnp.float32
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(dx)), (gate.__name__, out, dx)


def test_sigmoid_softplus_exact_limits():
    s, ds = vjp_ones(ops.sigmoid, BIG)  # lax.logistic's rule
    np.testing.assert_array_equal(s[np.array([0, -1])], [0.0, 1.0])
    np.testing.assert_array_equal(ds[np.array([0, -1])], [0.0, 0.0])
    sp, dsp = vjp_ones(A.softplus, BIG)
    np.testing.assert_array_equal(sp[np.array([0, -1])], [0.0, 1e4])
    np.testing.assert_array_equal(dsp[np.array([0, -1])], [0.0, 1.0])


@pytest.mark.parametrize("loss", [L.softmax_cross_entropy, L.svm_loss])
def test_losses_finite_at_large_logits(loss):
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, 1e4]], jnp.float32)
    labels = np.array([1, 1, 0])
    value, dlogits = fnn.value_and_grad(loss)(logits, labels)
    assert np.isfinite(value) and np.all(np.isfinite(dlogits)), (loss.name, value, dlogits)
    assert dlogits.dtype == jnp.float32


def test_softmax_cross_entropy_large_logits_values():
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], jnp.float32)
    value, dlogits = fnn.value_and_grad(L.softmax_cross_entropy)(logits, np.array([1, 1]))
    assert value == np.float32(1e4)  # row 0 costs 2e4, row 1 costs 0
    np.testing.assert_allclose(dlogits, [[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]], atol=1e-7)


# ---- errors -----------------------------------------------------------------------------------
LOSSES = [L.softmax_cross_entropy, L.svm_loss]


@pytest.mark.parametrize("loss", LOSSES)
def test_float_labels_raise(loss):
    with pytest.raises(fnn.GateError, match=rf"'{loss.name}'.*labels f32\[4\].*float32"):
        loss(jnp.zeros((4, 3)), jnp.zeros(4, jnp.float32))


@pytest.mark.parametrize("loss", LOSSES)
def test_out_of_range_labels_raise_with_values(loss):
    pattern = rf"'{loss.name}'.*\[0, 3\).*values \[3, -1\].*rows \[1, 3\]"
    with pytest.raises(fnn.GateError, match=pattern):
        loss(jnp.zeros((4, 3)), np.array([0, 3, 2, -1]))
    # raised from the forward while fnn.grad traces it too
    with pytest.raises(fnn.GateError, match=loss.name):
        fnn.grad(loss)(jnp.zeros((2, 3)), np.array([0, 7]))


@pytest.mark.parametrize("loss", LOSSES)
def test_wrong_label_shape_raises(loss):
    with pytest.raises(fnn.GateError, match=rf"'{loss.name}'.*shape \(4,\).*f32\[4,3\].*i32\[3\]"):
        loss(jnp.zeros((4, 3)), jnp.zeros(3, jnp.int32))
    # svm takes (N, C) scores; cross-entropy takes logits (..., C), here one example of 12
    # classes whose label is a scalar
    pattern = (
        r"\(N, C\).*f32\[12\]"
        if loss is L.svm_loss
        else r"labels must have shape \(\).*f32\[12\].*i32\[12\]"
    )
    with pytest.raises(fnn.GateError, match=rf"'{loss.name}'.*{pattern}"):
        loss(jnp.zeros(12), jnp.zeros(12, jnp.int32))


@pytest.mark.parametrize("loss", LOSSES)
def test_empty_batch_raises(loss):
    with pytest.raises(fnn.GateError, match=rf"'{loss.name}'.*empty batch.*f32\[0,3\]"):
        loss(jnp.zeros((0, 3)), jnp.zeros(0, jnp.int32))


def test_traced_labels_skip_the_range_check():
    """Under jit the labels are abstract: the gate cannot look at them, and does not fail."""
    f = jax.jit(fnn.grad(L.softmax_cross_entropy))
    d = f(jnp.zeros((2, 3)), jnp.array([0, 2]))
    np.testing.assert_allclose(d, [[-1 / 3, 1 / 6, 1 / 6], [1 / 6, 1 / 6, -1 / 3]], rtol=1e-6)


def test_mse_shape_mismatch_raises():
    with pytest.raises(fnn.GateError, match=r"'mse'.*f32\[3,4\].*f32\[4\]"):
        L.mse(jnp.zeros((3, 4)), jnp.zeros(4))
