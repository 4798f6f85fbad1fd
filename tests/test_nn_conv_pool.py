"""The convolution and pooling layers with the parameters peers use (issue 12): 1-D/2-D/3-D,
dilation, groups (depthwise, separable), transposed convolution, pooling with padding,
dilation, ceil_mode and count_include_pad. Shapes, values against a direct reference, and
fnn.grad == jax.grad in float64."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import nn

KEY = jax.random.PRNGKey(0)


def grads_agree(layer, shape, x64=True):
    params, state, out = layer.init(KEY, shape)
    x = jax.random.normal(jax.random.PRNGKey(1), (2,) + shape, jnp.float64)
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
    y, _ = layer.apply(params, state, x)
    assert y.shape[1:] == tuple(out)
    loss = lambda p, x: jnp.sum(jnp.sin(layer.apply(p, state, x)[0]))
    argnums = (0, 1) if params else 1
    # both gradients in one compiled program (op by op they take 4-5x longer; fnn.grad's eager
    # path is tested on the models, tests/test_models.py)
    try:
        mine, ref = jax.jit(
            lambda p, x: (
                fnn.grad(loss, argnums=argnums)(p, x),
                jax.grad(loss, argnums=argnums)(p, x),
            )
        )(params, x)
    except NotImplementedError:  # JAX has no VJP of a dilated max pool; fnn does: numerics
        from fnn.check.numeric import numerical_vjp

        mine = jax.jit(fnn.grad(loss, argnums=argnums))(params, x)
        ref = numerical_vjp(lambda x: loss(params, x), [x], jnp.ones(()))[0]
        np.testing.assert_allclose(mine, ref, rtol=1e-6, atol=1e-8)
        return params, x, y
    for a, b in zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    return params, x, y


@pytest.mark.parametrize(
    "layer, shape",
    [
        (nn.Conv1D(4, 3, dilation=2), (10, 3)),
        (nn.Conv1D(4, 2, stride=2, padding="VALID"), (9, 2)),
        (nn.Conv(6, 3, groups=3, dilation=2), (8, 8, 3)),
        (nn.Conv2D(4, 3, stride=2), (7, 7, 2)),
        (nn.Conv3D(2, 2, stride=2, padding=((0, 1),) * 3), (4, 4, 4, 2)),
        (nn.DepthwiseConv2D(3, multiplier=2), (6, 6, 3)),
        (nn.SeparableConv2D(5, 3), (6, 6, 3)),
        (nn.ConvTranspose2D(4, 3, stride=2), (5, 5, 3)),
        (nn.ConvTranspose2D(2, 2, stride=2, padding="VALID"), (3, 4, 1)),
    ],
)
def test_conv_layers(layer, shape, x64):
    grads_agree(layer, shape)


def test_depthwise_and_dilated_values(x64):
    params, x, y = grads_agree(nn.DepthwiseConv2D(3), (5, 5, 2))
    for c in range(2):  # each channel convolved with its own kernel alone
        one = jax.lax.conv_general_dilated(
            x[..., c : c + 1],
            params["w"][..., :, c : c + 1],
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        np.testing.assert_allclose(y[..., c], one[..., 0] + params["b"][c], rtol=1e-12)
    p, x, y = grads_agree(nn.Conv1D(1, 2, dilation=3, padding="VALID"), (7, 1))
    w = p["w"][:, 0, 0]
    np.testing.assert_allclose(
        y[0, :, 0], x[0, :4, 0] * w[0] + x[0, 3:7, 0] * w[1] + p["b"][0], rtol=1e-12
    )


def _pool_reference(x, kind, k, s, p, d, ceil, count_pad):
    """PyTorch's 1-D max/avg pooling, element by element (x: (L,))."""
    n = len(x)
    span = (k - 1) * d + 1
    size = (n + 2 * p - span) / s + 1
    out = int(np.ceil(size)) if ceil else int(np.floor(size))
    if ceil and (out - 1) * s >= n + p:
        out -= 1
    res = []
    for i in range(out):
        start = i * s - p
        idx = [start + j * d for j in range(k)]
        inside = [t for t in idx if 0 <= t < n]
        if kind == "max":
            res.append(max(x[t] for t in inside))
        else:
            padded = [t for t in idx if -p <= t < n + p]
            res.append(sum(x[t] for t in inside) / (len(padded) if count_pad else len(inside)))
    return np.array(res)


@pytest.mark.parametrize(
    "kind, k, s, p, d, ceil, count_pad",
    [
        combo + (cp,)
        for combo in itertools.product(
            ["max", "avg"], [2, 3], [1, 2], [0, 1], [1, 2], [False, True]
        )
        for cp in ([True, False] if combo[0] == "avg" else [True])
        if combo[3] <= combo[1] // 2
    ][::3],
)  # a deterministic third of the combinations
def test_pooling_matches_pytorch_semantics(kind, k, s, p, d, ceil, count_pad, x64):
    n = 9
    x = jnp.asarray(np.random.default_rng(k * 7 + s).permutation(n) / 3.0 - 1.0)
    layer = nn.Pool(
        kind,
        k,
        ndim=1,
        stride=s,
        padding=p,
        dilation=d,
        ceil_mode=ceil,
        count_include_pad=count_pad,
    )
    _, _, out = layer.init(KEY, (n, 1))
    y, _ = layer.apply({}, {}, x[None, :, None])
    np.testing.assert_allclose(
        y[0, :, 0], _pool_reference(np.asarray(x), kind, k, s, p, d, ceil, count_pad), rtol=1e-12
    )
    assert tuple(out) == y.shape[1:]
    grads_agree(layer, (n, 2))


def test_pool_2d_and_bad_arguments(x64):
    grads_agree(nn.Pool("max", 3, stride=2, padding=1, ceil_mode=True), (7, 7, 2))
    grads_agree(nn.Pool("avg", (2, 3), stride=(1, 2), padding="SAME"), (5, 6, 1))
    with pytest.raises(ValueError, match="MaxPool2D: window"):
        nn.Pool("max", 0)
    with pytest.raises(ValueError, match="Conv2D: groups 2 must divide the input channels 3"):
        nn.Conv(4, 3, groups=2).init(KEY, (5, 5, 3))
    with pytest.raises(ValueError, match="Conv1D.*output would be empty"):
        nn.Conv1D(2, 5, padding="VALID").init(KEY, (3, 1))
