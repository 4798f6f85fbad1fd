"""Layers and models: shapes, initializers, parameter counts, and fnn.grad == jax.grad (float64)
on every layer, combinator and model."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import nn
from fnn.check import rel_error

KEY = jax.random.PRNGKey(0)

# (name, layer factory, per-example input shape, train)
LAYERS = [
    ("dense", lambda: nn.Dense(4), (5,), False),
    ("dense_flattens", lambda: nn.Dense(3, init="glorot"), (2, 3), False),
    ("conv_same", lambda: nn.Conv2D(3, 3), (5, 5, 2), False),
    (
        "conv_valid_stride2",
        lambda: nn.Conv2D(2, (3, 2), stride=2, padding="VALID"),
        (7, 6, 2),
        False,
    ),
    ("max_pool", lambda: nn.MaxPool2D(2), (4, 6, 2), False),
    ("max_pool_overlap", lambda: nn.MaxPool2D(3, stride=1), (5, 5, 1), False),
    ("avg_pool", lambda: nn.AvgPool2D(2), (4, 4, 3), False),
    ("global_avg_pool", lambda: nn.GlobalAvgPool2D(), (3, 4, 2), False),
    ("flatten", lambda: nn.Flatten(), (2, 3, 2), False),
    ("dropout_train", lambda: nn.Dropout(0.5), (6,), True),
    ("batch_norm_train", lambda: nn.BatchNorm(), (5,), True),
    ("batch_norm_eval", lambda: nn.BatchNorm(), (5,), False),
    ("batch_norm_nhwc", lambda: nn.BatchNorm(), (3, 3, 2), True),
    ("layer_norm", lambda: nn.LayerNorm(), (6,), False),
    ("relu", nn.Relu, (7,), False),
    ("sigmoid", nn.Sigmoid, (7,), False),
    ("tanh", nn.Tanh, (7,), False),
    ("leaky_relu", lambda: nn.LeakyRelu(0.1), (7,), False),
    ("elu", lambda: nn.Elu(0.5), (7,), False),
    ("softplus", nn.Softplus, (7,), False),
    ("gelu", nn.Gelu, (7,), False),
    ("gelu_tanh", lambda: nn.Gelu(approximate=True), (7,), False),
    ("silu", nn.Silu, (7,), False),
    ("maxout", lambda: nn.Maxout(3), (9,), False),
    ("serial", lambda: nn.serial(nn.Dense(6), nn.Tanh(), nn.Dense(2)), (4,), False),
    (
        "residual_identity",
        lambda: nn.residual(nn.serial(nn.Dense(4), nn.Relu(), nn.Dense(4))),
        (4,),
        False,
    ),
    ("residual_block", lambda: nn.ResidualBlock(3, stride=2, in_channels=2), (4, 4, 2), True),
    ("mlp_3layer", lambda: nn.mlp((8, 6), 3, batch_norm=True, dropout=0.2), (2, 2, 1), True),
    ("cnn", lambda: nn.cnn((2, 3), 4, dense=(5,)), (4, 4, 1), False),
    ("resnet", lambda: nn.resnet((2, 3), 3), (4, 4, 3), True),
]
IDS = [spec[0] for spec in LAYERS]


def to64(tree):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


@pytest.mark.parametrize("name,make,shape,train", LAYERS, ids=IDS)
def test_output_shape_matches_init(name, make, shape, train):
    layer = make()
    params, state, out_shape = layer.init(KEY, shape)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3,) + shape), jnp.float32)
    y, new_state = layer.apply(params, state, x, key=jax.random.PRNGKey(2), train=train)
    assert y.shape == (3,) + tuple(out_shape), (name, y.shape, out_shape)
    assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
    p_shapes, _, o = nn.layer_shapes(layer, shape)  # the same from shapes alone
    assert o == out_shape
    assert nn.count_params(p_shapes) == nn.count_params(params)


@pytest.mark.parametrize("name,make,shape,train", LAYERS, ids=IDS)
def test_fnn_grad_matches_jax_grad(name, make, shape, train, x64):
    """d/dparams and d/dx of sum(apply(params, x) * ct): hand-written rules vs jax.grad."""
    layer = make()
    params, state, out_shape = layer.init(KEY, shape)
    params, state = to64(params), to64(state)
    rng = np.random.default_rng(0)
    # perturb the parameters so BatchNorm/LayerNorm scales and biases are not all 1 and 0
    params = jax.tree_util.tree_map(lambda p: p + 0.1 * rng.standard_normal(p.shape), params)
    x = jnp.asarray(rng.standard_normal((4,) + shape))
    ct = jnp.asarray(rng.standard_normal((4,) + tuple(out_shape)))
    key = jax.random.PRNGKey(3)

    def f(params, x):
        y, _ = layer.apply(params, state, x, key=key, train=train)
        return (y * ct).sum()

    value, (dp, dx) = jax.jit(fnn.value_and_grad(f, argnums=(0, 1)))(params, x)
    ref_value, (rp, rx) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(params, x)
    assert abs(float(value) - float(ref_value)) <= 1e-12 * (1 + abs(float(ref_value)))
    assert rel_error(dx, rx) <= 1e-9, name
    flat, ref = jax.tree_util.tree_leaves_with_path(dp), jax.tree_util.tree_leaves(rp)
    assert len(flat) == len(ref)
    # errors relative to the gradient's overall scale: some entries are 0 in exact arithmetic
    # (a conv bias before BatchNorm), and both engines give rounding noise there
    scale = max([float(jnp.max(jnp.abs(b))) for b in ref if b.size] + [1e-30])
    for (path, a), b in zip(flat, ref):
        err = float(jnp.max(jnp.abs(a - b))) / scale if a.size else 0.0
        assert err <= 1e-9, (name, jax.tree_util.keystr(path), err)


# ---- initializers ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,shape,std",
    [
        ("he", (400, 300), math.sqrt(2 / 400)),
        ("kaiming", (3, 3, 16, 32), math.sqrt(2 / 144)),
        ("glorot", (400, 300), math.sqrt(2 / 700)),
        ("xavier", (3, 3, 16, 32), math.sqrt(2 / (144 + 288))),
        ("glorot_uniform", (400, 300), math.sqrt(2 / 700)),
        ("he_uniform", (400, 300), math.sqrt(2 / 400)),
        ("lecun", (400, 300), math.sqrt(1 / 400)),
        ("small", (400, 300), 0.01),
    ],
)
def test_initializer_scales(name, shape, std):
    w = nn.get_initializer(name)(KEY, shape)
    assert w.shape == shape and w.dtype == jnp.float32
    assert abs(float(jnp.std(w)) / std - 1) < 0.05, (name, float(jnp.std(w)), std)
    assert abs(float(jnp.mean(w))) < 0.05 * std
    if name.endswith("uniform"):
        assert float(jnp.max(jnp.abs(w))) <= math.sqrt(3) * std * 1.0001


def test_initializer_per_layer_and_errors():
    small, _, _ = nn.Dense(200, init="small").init(KEY, (300,))
    he, _, _ = nn.Dense(200, init="he").init(KEY, (300,))
    assert float(jnp.std(small["w"])) < 0.011 < float(jnp.std(he["w"]))
    custom, _, _ = nn.Dense(2, init=lambda k, s, d=jnp.float32: jnp.full(s, 7.0, d)).init(KEY, (3,))
    assert float(custom["w"][0, 0]) == 7.0 and float(custom["b"][0]) == 0.0
    with pytest.raises(ValueError, match="unknown initializer 'gauss'.*glorot"):
        nn.Dense(2, init="gauss")


# ---- parameter counts and summary --------------------------------------------------------------
def test_param_counts_of_the_models():
    two = nn.mlp((100,))  # the lecture's 2-layer net on 8x8 digits
    p, _, out = nn.layer_shapes(two, (8, 8, 1))
    assert out == (10,) and nn.count_params(p) == 64 * 100 + 100 + 100 * 10 + 10
    three = nn.mlp((100, 50))
    assert nn.count_params(nn.layer_shapes(three, (8, 8, 1))[0]) == 6500 + 5050 + 510
    p, _, _ = nn.layer_shapes(nn.cnn(), (28, 28, 1))
    convs = (9 * 32 + 32) + (9 * 32 * 64 + 64)
    assert nn.count_params(p) == convs + (7 * 7 * 64 * 128 + 128) + (128 * 10 + 10)
    p, s, out = nn.layer_shapes(nn.resnet(), (32, 32, 3))
    assert out == (10,) and nn.count_params(p) == 78378 and nn.count_params(s) == 672


def test_summary_table():
    text = nn.summary(nn.mlp((100,)), (8, 8, 1))
    assert "1_dense" in text and "w 64x100" in text and "6,500" in text
    assert "trainable parameters: 7,510" in text
    text = nn.summary(nn.resnet((4, 8)), (32, 32, 3))
    assert "shortcut" in text and "state (non-trainable)" in text and "(16, 16, 8)" in text


# ---- behaviour of particular layers ------------------------------------------------------------
def test_batch_norm_state_train_and_eval():
    bn = nn.BatchNorm(momentum=0.9)
    params, state, _ = bn.init(KEY, (3,))
    x = jnp.asarray([[1.0, 2.0, 3.0], [3.0, 6.0, 9.0]])
    y, new = bn.apply(params, state, x, train=True)
    np.testing.assert_allclose(new["mean"], 0.1 * x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(new["var"], 0.9 + 0.1 * x.var(0), rtol=1e-6)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-6)
    y_eval, same = bn.apply(params, new, x, train=False)
    np.testing.assert_allclose(same["mean"], new["mean"])
    np.testing.assert_allclose(y_eval, (x - new["mean"]) / jnp.sqrt(new["var"] + 1e-5), rtol=1e-5)


def test_dropout_modes():
    layer = nn.Dropout(0.5)
    x = jnp.ones((100, 40))
    y, _ = layer.apply({}, {}, x, train=False)
    assert y is x
    y, _ = layer.apply({}, {}, x, key=KEY, train=True)
    assert set(np.unique(np.asarray(y)).tolist()) == {0.0, 2.0}
    assert 0.45 < float(jnp.mean(y == 0)) < 0.55
    with pytest.raises(ValueError, match="needs a PRNG key"):
        layer.apply({}, {}, x, train=True)
    with pytest.raises(ValueError, match="rate"):
        nn.Dropout(1.0)


def test_stax_style_unpacking():
    init, apply = nn.serial(nn.Dense(3), nn.Relu())
    params, state, shape = init(KEY, (2,))
    assert apply(params, state, jnp.ones((1, 2)))[0].shape == (1, 3) and shape == (3,)


def test_layer_errors():
    with pytest.raises(TypeError, match="nn.Relu instead of nn.Relu()"):
        nn.serial(nn.Dense(3), nn.Relu)
    with pytest.raises(ValueError, match="identity shortcut"):
        nn.residual(nn.Dense(3)).init(KEY, (4,))
    with pytest.raises(ValueError, match="images"):
        nn.Conv2D(3).init(KEY, (5,))
    with pytest.raises(ValueError, match="does not fit"):
        nn.MaxPool2D(4).init(KEY, (3, 3, 1))
    with pytest.raises(ValueError, match="divisible"):
        nn.Maxout(2).init(KEY, (5,))
    with pytest.raises(ValueError, match="unknown activation"):
        nn.Activation("swish")
    with pytest.raises(ValueError, match="unknown model"):
        nn.build_model("vgg")


def test_every_activation_gate_has_a_layer():
    gates = {"relu", "sigmoid", "tanh", "leaky_relu", "elu", "softplus", "gelu", "silu"}
    assert gates == set(nn.ACTIVATIONS)
    assert "maxout" in fnn.ops.registry and hasattr(nn, "Maxout")


def test_combinators_show_every_output_to_observe():
    model = nn.serial(
        nn.Dense(4), nn.Relu(), nn.residual(nn.serial(nn.Dense(4), nn.Tanh())), nn.Dense(2)
    )
    params, state, _ = model.init(KEY, (3,))
    x = jnp.ones((5, 3))
    seen = {}
    y, _ = model.apply(
        params,
        state,
        x,
        observe=lambda path, layer, v: seen.update({"/".join(path): (layer.name, v.shape)}),
    )
    np.testing.assert_array_equal(y, model.apply(params, state, x)[0])  # observing changes nothing
    assert list(seen) == [
        "0_dense",
        "1_relu",
        "2_residual/main/0_dense",
        "2_residual/main/1_tanh",
        "2_residual/main",
        "2_residual",
        "3_dense",
    ]
    assert seen["2_residual/main/1_tanh"] == ("tanh", (5, 4)) and seen["3_dense"][1] == (5, 2)
    assert ["/".join(p) for p, _ in nn.named_layers(model)] == [
        "0_dense",
        "1_relu",
        "2_residual",
        "2_residual/main",
        "2_residual/main/0_dense",
        "2_residual/main/1_tanh",
        "3_dense",
    ]
    relu = nn.Relu()
    assert list(nn.named_layers(relu)) == [((), relu)]  # a lone layer is itself
