"""Ordinary JAX code, differentiated by fnn's hand-written rules: third-party models (Equinox,
Flax), an optax loss, and the lecture's nets in plain jax.numpy, against jax.grad in float64,
eagerly, under jit and under vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn

eqx = pytest.importorskip("equinox")
linen = pytest.importorskip("flax.linen")


def assert_same(mine, ref, rtol=1e-10):
    """Leaf by leaf, relative to the largest entry of all leaves (a leaf whose exact gradient
    is zero, a bias before BatchNorm, is rounding noise against that scale)."""
    la, lb = jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(ref)
    assert jax.tree_util.tree_structure(mine) == jax.tree_util.tree_structure(ref)
    scale = max(float(jnp.max(jnp.abs(b))) for b in lb if b.size)
    for a, b in zip(la, lb):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


def check(loss, *args, vmap_args=None, eager=True):
    """fnn.grad == jax.grad eagerly (unless eager=False) and under jit; under vmap over
    `vmap_args`' leading axis (jitted, as the reference: compiled once instead of run op by
    op)."""
    ref = jax.jit(jax.grad(loss))(*args)
    if eager:
        assert_same(fnn.grad(loss)(*args), ref)
    assert_same(jax.jit(fnn.grad(loss))(*args), ref)
    if vmap_args is not None:
        axes = tuple(None if a is None else 0 for a in vmap_args)
        full = tuple(a if v is None else v for a, v in zip(args, vmap_args))
        assert_same(
            jax.jit(jax.vmap(fnn.grad(loss), in_axes=axes))(*full),
            jax.jit(jax.vmap(jax.grad(loss), in_axes=axes))(*full),
        )


@pytest.fixture
def keys(x64):
    return jax.random.split(jax.random.PRNGKey(0), 6)


# ---- Equinox ------------------------------------------------------------------------------------
def test_equinox_mlp(keys):
    mlp = eqx.nn.MLP(4, 3, 8, 2, key=keys[0], dtype=jnp.float64)
    params, static = eqx.partition(mlp, eqx.is_inexact_array)
    x = jax.random.normal(keys[1], (2, 5, 4), dtype=jnp.float64)
    loss = lambda p, x: jnp.sum(jax.vmap(eqx.combine(p, static))(x) ** 2)
    check(loss, params, x[0], vmap_args=(None, x))


def test_equinox_conv2d(keys):
    conv = eqx.nn.Conv2d(3, 4, 3, padding=1, stride=2, key=keys[0], dtype=jnp.float64)
    params, static = eqx.partition(conv, eqx.is_inexact_array)
    img = jax.random.normal(keys[1], (2, 3, 7, 7), dtype=jnp.float64)
    check(lambda p: jnp.sum(jnp.tanh(jax.vmap(eqx.combine(p, static))(img))), params)


def test_equinox_lstm_cell_driven_by_scan(keys):
    cell = eqx.nn.LSTMCell(4, 6, key=keys[0], dtype=jnp.float64)
    params, static = eqx.partition(cell, eqx.is_inexact_array)
    seq = jax.random.normal(keys[1], (3, 9, 4), dtype=jnp.float64)

    def loss(p, xs):
        c = eqx.combine(p, static)
        step = lambda state, xt: (c(xt, state), c(xt, state)[0])
        _, hs = jax.lax.scan(step, (jnp.zeros(6), jnp.zeros(6)), xs)
        return jnp.sum(hs[-1] ** 2) + jnp.mean(hs)

    check(loss, params, seq[0], vmap_args=(None, seq))


def test_equinox_multihead_attention(keys):
    mha = eqx.nn.MultiheadAttention(2, 8, key=keys[0], dtype=jnp.float64)
    params, static = eqx.partition(mha, eqx.is_inexact_array)
    q = jax.random.normal(keys[1], (5, 8), dtype=jnp.float64)
    check(lambda p: jnp.sum(eqx.combine(p, static)(q, q, q) ** 2), params)


# ---- Flax -------------------------------------------------------------------------------------------
class CNN(linen.Module):
    @linen.compact
    def __call__(self, x, train):
        f64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
        x = linen.Conv(8, (3, 3), **f64)(x)
        x = linen.BatchNorm(use_running_average=not train, **f64)(x)
        x = linen.max_pool(linen.relu(x), (2, 2), strides=(2, 2))
        x = linen.avg_pool(x, (2, 2), strides=(1, 1), padding="SAME")
        x = linen.Dropout(0.3, deterministic=not train)(x)
        return linen.Dense(5, **f64)(x.reshape((x.shape[0], -1)))


def test_flax_cnn_with_batchnorm_dropout_and_an_optax_loss(keys):
    model = CNN()
    x = jax.random.normal(keys[1], (4, 8, 8, 3), dtype=jnp.float64)
    y = jnp.array([0, 1, 2, 4])
    v = model.init({"params": keys[0], "dropout": keys[2]}, x, train=True)

    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": v["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": keys[3]},
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    check(loss, v["params"], eager=False)  # (eager: the Equinox models, the lecture's nets)


class EncoderBlock(linen.Module):
    @linen.compact
    def __call__(self, x):
        f64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
        h = linen.LayerNorm(**f64)(x)
        mask = linen.make_causal_mask(jnp.ones(x.shape[:2]))
        x = x + linen.MultiHeadDotProductAttention(num_heads=2, **f64)(h, h, mask=mask)
        h = linen.Dense(32, **f64)(linen.LayerNorm(**f64)(x))
        return x + linen.Dense(16, **f64)(linen.gelu(h))


def test_flax_transformer_encoder_block(keys):
    block = EncoderBlock()
    xs = jax.random.normal(keys[1], (2, 6, 16), dtype=jnp.float64)
    v = block.init(keys[0], xs)
    check(lambda p, xs: jnp.sum(block.apply({"params": p}, xs) ** 2), v["params"], xs, eager=False)


# ---- the lecture's nets in plain jax.numpy ---------------------------------------------------------
def test_lecture_nets_in_plain_jax(keys):
    rng = np.random.default_rng(0)
    neuron = lambda w, x: 1.0 / (1.0 + jnp.exp(-(w[0] * x[0] + w[1] * x[1] + w[2])))
    g = fnn.grad(neuron, argnums=(0, 1))(jnp.array([2.0, -3.0, -3.0]), jnp.array([-1.0, -2.0]))
    np.testing.assert_allclose(g[0], [-0.1966119, -0.3932238, 0.1966119], rtol=1e-6)
    np.testing.assert_allclose(g[1], [0.3932238, -0.5898357], rtol=1e-6)

    def two_layer(p, x, y):  # the lecture's 2-layer net: sigmoid hidden layer, squared error
        h = jax.nn.sigmoid(x @ p["w1"] + p["b1"])
        return jnp.sum((h @ p["w2"] + p["b2"] - y) ** 2)

    def three_layer(p, x, y):  # ReLU, leaky ReLU, softmax cross-entropy
        h = jax.nn.relu(x @ p["w1"] + p["b1"])
        h = jax.nn.leaky_relu(h @ p["w2"] + p["b2"], 0.1)
        return optax.softmax_cross_entropy_with_integer_labels(h @ p["w3"], y).mean()

    p = {
        k: jnp.asarray(rng.standard_normal(s))
        for k, s in {"w1": (4, 6), "b1": (6,), "w2": (6, 5), "b2": (5,), "w3": (5, 3)}.items()
    }
    x = jnp.asarray(rng.standard_normal((7, 4)))
    check(
        two_layer,
        {k: p[k] for k in ("w1", "b1", "w2", "b2")},
        x,
        jnp.asarray(rng.standard_normal((7, 5))),
    )
    check(three_layer, p, x, jnp.asarray(rng.integers(0, 3, 7)))


def test_bench_rows_of_plain_jax_models_run():
    from fnn.bench import jax_models

    rows = jax_models.run(reps=2, quick=True)
    models = [r for r in rows if r["kind"] == "jax_model"]
    assert [r["case"] for r in models] == list(jax_models.MODELS)
    assert all(r["ratio"] > 0 and r["trace_compile_ratio"] > 0 for r in models)
    assert {r["case"] for r in rows if r["kind"] == "trace"} == {"python loop", "scan"}
