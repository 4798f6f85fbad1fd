"""hypothesis draws whole networks: MLPs and CNNs of random depth, widths, kernels, strides,
padding, pooling, activations, BatchNorm and dropout, on random input shapes and batch sizes;
fnn.grad (hand-written VJPs) must agree with jax.grad on the loss, for the parameters and the
input, in float64 (tight) and float32 (loose)."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fnn
from fnn import nn, ops

ACTIVATIONS = sorted(nn.ACTIVATIONS)
TOL = {"float64": 1e-9, "float32": 1e-4}
SETTINGS = dict(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def mlps(draw):
    batch_norm = draw(st.booleans())
    layers = [nn.Flatten()]
    for width in draw(st.lists(st.integers(1, 6), max_size=3)):
        layers.append(nn.Dense(width, init=draw(st.sampled_from(["he", "glorot", "lecun"]))))
        if batch_norm:
            layers.append(nn.BatchNorm())
        layers.append(nn.Activation(draw(st.sampled_from(ACTIVATIONS))))
        if draw(st.booleans()):
            layers.append(nn.Dropout(0.3))
    classes = draw(st.integers(1, 5))
    layers.append(nn.Dense(classes))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    batch = draw(st.integers(2 if batch_norm else 1, 5))  # BatchNorm of one value is constant
    return nn.serial(*layers, name="mlp"), shape, batch, classes


@st.composite
def cnns(draw):
    batch_norm = draw(st.booleans())
    layers = []
    for c in draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)):
        layers.append(
            nn.Conv2D(
                c,
                draw(st.integers(1, 3)),
                stride=draw(st.integers(1, 2)),
                padding=draw(st.sampled_from(["SAME", "VALID"])),
            )
        )
        if batch_norm:
            layers.append(nn.BatchNorm())
        layers.append(nn.Activation(draw(st.sampled_from(ACTIVATIONS))))
        pool = draw(st.sampled_from([None, nn.MaxPool2D, nn.AvgPool2D]))
        if pool is not None:
            layers.append(pool(2))
    head = draw(st.sampled_from(["flatten", "global"]))
    layers.append(nn.Flatten() if head == "flatten" else nn.GlobalAvgPool2D())
    classes = draw(st.integers(1, 4))
    layers.append(nn.Dense(classes))
    shape = (draw(st.integers(3, 7)), draw(st.integers(3, 7)), draw(st.integers(1, 3)))
    batch = draw(st.integers(2, 3))
    return nn.serial(*layers, name="cnn"), shape, batch, classes


def draw_leaf(rng, leaf, dtype):
    """Random values of a parameter's shape: kernels ~ N(0, 1/fan_in), vectors in [0.5, 1.5]."""
    if len(leaf.shape) >= 2:
        fan_in = int(np.prod(leaf.shape[:-1]))
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(dtype)
    return rng.uniform(0.5, 1.5, leaf.shape).astype(dtype)


def check(model, shape, batch, classes, seed, dtype):
    try:  # shapes only: nothing is initialized or compiled
        p_shapes, s_shapes, out = nn.layer_shapes(model, shape)
    except ValueError:  # the drawn kernels/pools do not fit the drawn image: not a network
        assume(False)
    assert out == (classes,)
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(lambda leaf: draw_leaf(rng, leaf, dtype), p_shapes)
    state = jax.tree_util.tree_map(lambda leaf: draw_leaf(rng, leaf, dtype), s_shapes)
    x = jnp.asarray(rng.standard_normal((batch,) + shape), dtype)
    y = jnp.asarray(rng.integers(0, classes, batch), jnp.int32)
    key = jax.random.PRNGKey(seed + 1)

    def loss(params, x):
        scores, _ = model.apply(params, state, x, key=key, train=True)
        return ops.softmax_cross_entropy(scores, y)

    @jax.jit  # both engines in one program: one compilation per drawn network
    def both(params, x):
        return (
            fnn.value_and_grad(loss, argnums=(0, 1))(params, x),
            jax.value_and_grad(loss, argnums=(0, 1))(params, x),
        )

    (value, (dp, dx)), (ref_value, (rp, rx)) = both(params, x)
    assert value.dtype == dtype and dx.dtype == dtype
    tol = TOL[np.dtype(dtype).name]
    assert abs(float(value) - float(ref_value)) <= tol * (1 + abs(float(ref_value)))
    # errors relative to the gradient's overall scale: entries that are 0 in exact arithmetic
    # (a bias before BatchNorm) are rounding noise in both engines
    ours = jax.tree_util.tree_leaves(dp) + [dx]
    theirs = jax.tree_util.tree_leaves(rp) + [rx]
    scale = max([float(jnp.max(jnp.abs(b))) for b in theirs if b.size] + [1e-30])
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype
        if a.size:
            err = float(jnp.max(jnp.abs(a - b))) / scale
            assert err <= tol, (model, shape, batch, err)


@settings(max_examples=8, **SETTINGS)
@given(case=mlps(), seed=st.integers(0, 2**16))
def test_random_mlps_float64(case, seed, x64):
    check(*case, seed, jnp.float64)


@settings(max_examples=5, **SETTINGS)
@given(case=mlps(), seed=st.integers(0, 2**16))
def test_random_mlps_float32(case, seed):
    check(*case, seed, jnp.float32)


@settings(max_examples=6, **SETTINGS)
@given(case=cnns(), seed=st.integers(0, 2**16))
def test_random_cnns_float64(case, seed, x64):
    check(*case, seed, jnp.float64)


@settings(max_examples=4, **SETTINGS)
@given(case=cnns(), seed=st.integers(0, 2**16))
def test_random_cnns_float32(case, seed):
    check(*case, seed, jnp.float32)
