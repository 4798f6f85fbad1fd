"""Conv, pooling, normalization and dropout gates beyond the generic registry suite.

tests/test_gates.py already checks every case of these gates against jax.vjp, central
differences, jit and vmap. Here: max-pool ties and both pooling paths, conv2d against a naive
NumPy convolution, batch-norm state, dropout's mask, and the errors bad shapes raise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import fnn
from fnn.check.numeric import numerical_vjp, rel_error
from fnn.errors import GateError
from fnn.ops.conv import avg_pool2d, conv2d, max_pool2d
from fnn.ops.normalization import batch_norm, dropout, layer_norm


def pullback(f, *args, ct):
    """fnn's VJP of `f` at `args`, applied to the cotangent `ct`."""
    out, vjp_fn = fnn.vjp(f, *args)
    return out, vjp_fn(ct)


def jax_max_pool(x, k, s):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *k, 1), (1, *s, 1), "VALID")


# ---- max pool: ties and the two backward paths ---------------------------------------------------
# (window, stride): reshape path (window == stride, divisible or not) and general path (overlaps)
POOLS = [
    ((2, 2), (2, 2)),
    ((3, 3), (3, 3)),
    ((2, 3), (2, 3)),
    ((3, 3), (2, 2)),
    ((2, 2), (1, 1)),
    ((3, 2), (1, 2)),
]


@pytest.mark.parametrize("k,s", POOLS)
def test_max_pool_all_equal_window_routes_to_one_element(k, s, x64):
    x = jnp.full((2, 7, 7, 3), 1.5)
    out_shape = (2, (7 - k[0]) // s[0] + 1, (7 - k[1]) // s[1] + 1, 3)
    out, (dx,) = pullback(lambda x: max_pool2d(x, window=k, stride=s), x, ct=jnp.ones(out_shape))
    np.testing.assert_array_equal(out, 1.5)
    assert float(dx.sum()) == out.size  # each window passes on exactly its g
    # every window's gradient went to its first element in row-major order: the top-left one
    expected = np.zeros(x.shape)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            expected[:, i * s[0], j * s[1], :] += 1
    np.testing.assert_array_equal(dx, expected)


def test_max_pool_ties_one_winner_per_window_random_ties(x64):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 2, (3, 6, 6, 4)), jnp.float64)  # many tied windows
    g = jnp.asarray(rng.standard_normal((3, 3, 3, 4)))
    _, (dx,) = pullback(lambda x: max_pool2d(x, window=2), x, ct=g)
    tiles = np.asarray(dx).reshape(3, 3, 2, 3, 2, 4)
    assert ((tiles != 0).sum(axis=(2, 4)) == 1).all()
    np.testing.assert_allclose(tiles.sum(axis=(2, 4)), g, rtol=1e-15)


@pytest.mark.parametrize("k,s", POOLS)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_matches_jax_reduce_window(k, s, ties, x64):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 7, 3))
    x = jnp.asarray(np.maximum(x, 0) if ties else x)  # relu'd: windows of tied zeros
    out_ref, jax_vjp = jax.vjp(lambda x: jax_max_pool(x, k, s), x)
    g = jnp.asarray(rng.standard_normal(out_ref.shape))
    out, (dx,) = pullback(lambda x: max_pool2d(x, window=k, stride=s), x, ct=g)
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_allclose(dx, jax_vjp(g)[0], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("k,s", POOLS)
def test_avg_pool_matches_jax_reduce_window(k, s, x64):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 8, 7, 3)))

    def ref(x):
        return lax.reduce_window(x, 0.0, lax.add, (1, *k, 1), (1, *s, 1), "VALID") / (k[0] * k[1])

    out_ref, jax_vjp = jax.vjp(ref, x)
    g = jnp.asarray(rng.standard_normal(out_ref.shape))
    out, (dx,) = pullback(lambda x: avg_pool2d(x, window=k, stride=s), x, ct=g)
    np.testing.assert_allclose(out, out_ref, rtol=1e-14)
    np.testing.assert_allclose(dx, jax_vjp(g)[0], rtol=1e-13, atol=1e-15)


# ---- conv2d against a naive convolution ----------------------------------------------------------
def naive_conv(x, w, s, pads):
    x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    (kh, kw), (n, h, wd, _) = w.shape[:2], x.shape
    ho, wo = (h - kh) // s[0] + 1, (wd - kw) // s[1] + 1
    out = np.zeros((n, ho, wo, w.shape[3]))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i * s[0] : i * s[0] + kh, j * s[1] : j * s[1] + kw, :]
            out[:, i, j, :] = np.einsum("nabc,abco->no", patch, w)
    return out


def same_pads(n, k, s):
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize(
    "xs,ws,stride,padding",
    [
        ((2, 7, 6, 3), (3, 3, 3, 4), 1, "VALID"),
        ((2, 7, 6, 3), (3, 2, 3, 4), 1, "SAME"),
        ((2, 7, 6, 3), (3, 3, 3, 4), 2, "SAME"),
        ((1, 8, 8, 2), (4, 4, 2, 3), 2, "SAME"),
        ((2, 7, 6, 3), (2, 3, 3, 2), (2, 3), 2),
        ((2, 6, 6, 2), (3, 3, 2, 2), 2, ((0, 1), (2, 0))),
    ],
)
def test_conv2d_matches_naive_convolution(xs, ws, stride, padding, x64):
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    s = (stride, stride) if isinstance(stride, int) else stride
    if padding == "VALID":
        pads = ((0, 0), (0, 0))
    elif padding == "SAME":
        pads = tuple(same_pads(n, k, ss) for n, k, ss in zip(xs[1:3], ws[:2], s))
    elif isinstance(padding, int):
        pads = ((padding, padding),) * 2
    else:
        pads = padding
    out = conv2d(jnp.asarray(x), jnp.asarray(w), stride=stride, padding=padding)
    ref = naive_conv(x, w, s, pads)
    if padding == "SAME":
        assert out.shape[1:3] == tuple(-(-n // ss) for n, ss in zip(xs[1:3], s))
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


# ---- batch norm ------------------------------------------------------------------------------
def bn_args(rng, shape):
    d = shape[-1]
    x = 2.0 * rng.standard_normal(shape) + 1.0
    return tuple(
        jnp.asarray(a)
        for a in (
            x,
            rng.uniform(0.5, 2, d),
            rng.standard_normal(d),
            rng.standard_normal(d),
            rng.uniform(0.5, 2.0, d),
        )
    )


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 3, 5)])
def test_batch_norm_train_uses_batch_stats_and_updates_running_stats(shape, x64):
    x, gamma, beta, rm, rv = bn_args(np.random.default_rng(4), shape)
    y, new_rm, new_rv = batch_norm(x, gamma, beta, rm, rv, train=True, momentum=0.75, eps=1e-5)
    xs = np.asarray(x).reshape(-1, shape[-1])
    mu, var = xs.mean(0), xs.var(0)  # biased variance, for normalizing and the running stat
    np.testing.assert_allclose(new_rm, 0.75 * np.asarray(rm) + 0.25 * mu, rtol=1e-12)
    np.testing.assert_allclose(new_rv, 0.75 * np.asarray(rv) + 0.25 * var, rtol=1e-12)
    expected = (np.asarray(x) - mu) / np.sqrt(var + 1e-5) * np.asarray(gamma) + np.asarray(beta)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
    yn = (np.asarray(y) - np.asarray(beta)) / np.asarray(gamma)
    np.testing.assert_allclose(yn.reshape(-1, shape[-1]).mean(0), 0, atol=1e-12)


@pytest.mark.parametrize("shift, spread", [(100.0, 0.1), (1000.0, 1.0)])
def test_batch_norm_float32_stays_accurate_far_from_zero(shift, spread):
    """Inputs whose mean is far larger than their spread (raw pixel values, a large bias): a
    one-pass variance E[x^2] - E[x]^2 cancels catastrophically in float32 (0.74 off in xhat
    at mean 100, spread 0.1); fnn's rule stays within float32 rounding of the float64 values,
    forward and backward."""
    rng = np.random.default_rng(11)
    x = (shift + spread * rng.standard_normal((256, 8))).astype(np.float32)
    g = rng.standard_normal((256, 8)).astype(np.float32)
    gamma, beta, rm, rv = (
        np.ones(8, np.float32),
        np.zeros(8, np.float32),
        np.zeros(8, np.float32),
        np.ones(8, np.float32),
    )
    y, vjp = fnn.vjp(lambda x: batch_norm(x, gamma, beta, rm, rv, train=True)[0], jnp.asarray(x))
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    mu, inv = x64.mean(0), 1 / np.sqrt(x64.var(0) + 1e-5)
    xhat = (x64 - mu) * inv
    np.testing.assert_allclose(y, xhat, atol=2e-3)
    dx = inv * (g64 - g64.mean(0) - xhat * (g64 * xhat).mean(0))
    np.testing.assert_allclose(vjp(jnp.asarray(g))[0], dx, rtol=0, atol=2e-2 * np.abs(dx).max())


def test_batch_norm_eval_uses_running_stats_and_keeps_them(x64):
    x, gamma, beta, rm, rv = bn_args(np.random.default_rng(5), (6, 4))
    y, out_rm, out_rv = batch_norm(x, gamma, beta, rm, rv, train=False)
    xn, rmn, rvn, gn, bn = (np.asarray(a) for a in (x, rm, rv, gamma, beta))
    expected = (xn - rmn) / np.sqrt(rvn + 1e-5) * gn + bn
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    np.testing.assert_array_equal(out_rm, rm)
    np.testing.assert_array_equal(out_rv, rv)
    # eval mode normalizes each example on its own: a batch of one gives the same row
    y1 = batch_norm(x[:1], gamma, beta, rm, rv, train=False)[0]
    np.testing.assert_allclose(y1, y[:1], rtol=1e-12)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 2, 3)])
def test_batch_norm_gradients_numerically_and_no_gradient_for_state(shape, train, x64):
    rng = np.random.default_rng(6)
    x, gamma, beta, rm, rv = bn_args(rng, shape)
    cts = tuple(jnp.asarray(rng.standard_normal(a.shape)) for a in (x, rm, rv))  # all 3 outputs
    _, grads = pullback(lambda *a: batch_norm(*a, train=train), x, gamma, beta, rm, rv, ct=cts)
    np.testing.assert_array_equal(grads[3], 0)  # running stats: state, no gradient
    np.testing.assert_array_equal(grads[4], 0)

    def y_only(x, gamma, beta):
        return batch_norm(x, gamma, beta, rm, rv, train=train)[0]

    num = numerical_vjp(y_only, [np.asarray(a) for a in (x, gamma, beta)], np.asarray(cts[0]))
    for n, mine in zip(num, grads[:3]):
        assert rel_error(n, mine) <= 1e-6


def test_layer_norm_forward(x64):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 4, 6))
    gamma, beta = rng.standard_normal(6), rng.standard_normal(6)
    y = layer_norm(jnp.asarray(x), jnp.asarray(gamma), jnp.asarray(beta), eps=1e-3)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(y, (x - mu) / np.sqrt(var + 1e-3) * gamma + beta, rtol=1e-12)


# ---- dropout ---------------------------------------------------------------------------------
def test_dropout_identity_when_rate_zero_or_eval():
    x = jnp.arange(12.0).reshape(3, 4)
    key = jax.random.PRNGKey(0)
    for kw in ({"rate": 0.0}, {"rate": 0.5, "train": False}):
        out, (dx,) = pullback(lambda x: dropout(x, key, **kw), x, ct=2 * x)  # noqa: B023 (called in this iteration)
        np.testing.assert_array_equal(out, x)
        np.testing.assert_array_equal(dx, 2 * x)


def test_dropout_keeps_the_mean_and_rate():
    x = jnp.ones((200, 100))
    out = dropout(x, jax.random.PRNGKey(1), rate=0.3)
    assert abs(float(jnp.mean(out == 0)) - 0.3) < 0.02
    assert abs(float(jnp.mean(out)) - 1.0) < 0.03
    np.testing.assert_allclose(out[out != 0], 1 / 0.7, rtol=1e-6)


def test_dropout_backward_uses_the_forward_mask():
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.uniform(1, 2, (8, 16)), jnp.float32)  # nonzero: zeros mark dropped ones
    g = jnp.asarray(rng.standard_normal((8, 16)), jnp.float32)
    out, (dx,) = pullback(lambda x: dropout(x, jax.random.PRNGKey(3), rate=0.4), x, ct=g)
    np.testing.assert_allclose(dx, np.where(np.asarray(out) != 0, g / 0.6, 0), rtol=1e-6)
    assert 0 < int((out == 0).sum()) < out.size
    # under jit as well (mask regenerated from the same key inside one program)
    dx_jit = jax.jit(
        lambda x: pullback(lambda x: dropout(x, jax.random.PRNGKey(3), rate=0.4), x, ct=g)[1][0]
    )(x)
    np.testing.assert_allclose(dx_jit, dx, rtol=1e-6)


def test_dropout_same_key_same_mask_other_key_other_mask():
    x = jnp.ones((64, 32))
    a = dropout(x, jax.random.PRNGKey(5), rate=0.5)
    b = dropout(x, jax.random.PRNGKey(5), rate=0.5)
    c = dropout(x, jax.random.PRNGKey(6), rate=0.5)
    np.testing.assert_array_equal(a, b)
    assert (np.asarray(a) != np.asarray(c)).any()
    d = dropout(x, jax.random.key(5), rate=0.5)  # new-style typed keys work too
    assert d.shape == x.shape


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_dropout_rejects_bad_rate(rate):
    with pytest.raises(GateError, match=r"dropout.*rate"):
        dropout(jnp.ones((2, 3)), jax.random.PRNGKey(0), rate=rate)


# ---- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call,pattern",
    [
        (lambda: conv2d(jnp.ones((5, 5, 3)), jnp.ones((3, 3, 3, 4))), r"conv2d.*x.*f32\[5,5,3\]"),
        (lambda: conv2d(jnp.ones((1, 5, 5, 3)), jnp.ones((3, 3, 4))), r"conv2d.*w.*f32\[3,3,4\]"),
        (
            lambda: conv2d(jnp.ones((1, 5, 5, 3)), jnp.ones((3, 3, 2, 4))),
            r"conv2d.*x f32\[1,5,5,3\].*3 channels.*w f32\[3,3,2,4\]",
        ),
        (
            lambda: conv2d(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 3, 4)), stride=0),
            r"conv2d.*stride",
        ),
        (
            lambda: conv2d(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 3, 4)), padding="FULL"),
            r"conv2d.*padding",
        ),
        (lambda: max_pool2d(jnp.ones((4, 4, 3)), window=2), r"max_pool2d.*x.*f32\[4,4,3\]"),
        (
            lambda: max_pool2d(jnp.ones((1, 4, 4, 3)), window=5),
            r"max_pool2d.*window \(5, 5\).*f32\[1,4,4,3\]",
        ),
        (lambda: avg_pool2d(jnp.ones((1, 4, 4, 3)), window=(2, 2, 2)), r"avg_pool2d.*window"),
        (
            lambda: batch_norm(
                jnp.ones((4, 3)), jnp.ones(3), jnp.ones(2), jnp.ones(3), jnp.ones(3), train=True
            ),
            r"batch_norm.*beta.*\(3,\).*f32\[4,3\].*f32\[2\]",
        ),
        (
            lambda: batch_norm(
                jnp.ones(3), jnp.ones(3), jnp.ones(3), jnp.ones(3), jnp.ones(3), train=True
            ),
            r"batch_norm.*f32\[3\]",
        ),
        (
            lambda: layer_norm(jnp.ones((4, 3)), jnp.ones(4), jnp.ones(3)),
            r"layer_norm.*gamma.*f32\[4,3\].*f32\[4\]",
        ),
    ],
)
def test_bad_shapes_raise_gate_error_naming_gate_and_shapes(call, pattern):
    with pytest.raises(GateError, match=pattern):
        call()


def test_a_kernel_larger_than_the_input_gives_an_empty_output_as_in_jax():
    out = conv2d(jnp.ones((1, 4, 4, 3)), jnp.ones((5, 5, 3, 4)))
    assert out.shape == (1, 0, 0, 4)
