"""Gradient health: each metric on a hand-made case, the drift monitor (≈ 0 for a correct model,
large for a wrong gate), `fit(diagnostics=N)` inside the compiled epoch without changing
training, and `python -m fnn train --diagnostics` writing diagnostics.jsonl and .png."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import nn
from fnn.check import health
from fnn.cli import main
from fnn.train import fit, load_dataset, make_loss_fn, make_optimizer
from fnn.train.health_log import HealthLog, summarize


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=600)


# compiled, as in training (eagerly every gate is its own dispatch)
_gradient_health = jax.jit(health.gradient_health, static_argnums=(0, 1))


def gradient_health(model, params, state, batch, *, key=None, l2=0.0, updates=None):
    """fnn.check.gradient_health of the training loss (fnn.train.make_loss_fn)."""
    return _gradient_health(
        make_loss_fn(model, l2=l2), model, params, state, batch, key=key, updates=updates
    )


layer_activations = jax.jit(health.layer_activations, static_argnums=0, static_argnames=("train",))


def dense_then(act, w, b):
    """serial(Dense, act) with the given weights: the pre-activations are x @ w + b."""
    model = nn.serial(nn.Dense(w.shape[1]), act)
    params = {
        "0_dense": {"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray(b, jnp.float32)},
        "1_" + act.name: {},
    }
    return model, params, {"0_dense": {}, "1_" + act.name: {}}


def batch(n, d, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(np.abs(rng.standard_normal((n, d))) + 0.1, jnp.float32)  # all positive
    return x, jnp.asarray(rng.integers(0, classes, n))


# ---- each metric on a hand-made case -------------------------------------------------------------
def test_dead_relu_fraction():
    x, y = batch(16, 3, classes=4)
    # all weights and biases negative, inputs positive: every pre-activation < 0, all units dead
    model, params, state = dense_then(nn.Relu(), -np.ones((3, 4)), -np.ones(4))
    h = gradient_health(model, params, state, (x, y))
    assert float(h["dead_relu"]["1_relu"]) == 1.0 and h["saturated"] == {}
    # units 0, 1 positive for every example, unit 2 for one example only, unit 3 for none
    x = x.at[5, 0].set(2e3)  # the one example that lifts unit 2 over its bias of -1000
    model, params, state = dense_then(
        nn.Relu(), np.array([[1, 1, 1, -1]] * 3), np.array([0, 0, -1e3, -1])
    )
    y_out, acts = layer_activations(model, params, state, x)
    assert health.activation_layers(model) == {"1_relu": "relu"}
    assert set(acts) == {"1_relu"} and np.count_nonzero(np.asarray(y_out)[:, 2]) == 1
    h = gradient_health(model, params, state, (x, y))
    assert float(h["dead_relu"]["1_relu"]) == 0.25  # unit 3 only: dead means 0 for EVERY example


def test_saturated_tanh_and_sigmoid():
    x = jnp.ones((8, 1), jnp.float32)
    y = jnp.zeros(8, jnp.int32)
    # pre-activations [10, -10, 0.1] for every example: tanh saturates in 2 of 3 units
    model, params, state = dense_then(nn.Tanh(), np.array([[10.0, -10.0, 0.1]]), np.zeros(3))
    h = gradient_health(model, params, state, (x, y))
    assert float(h["saturated"]["1_tanh"]) == pytest.approx(2 / 3) and h["dead_relu"] == {}
    # large inputs: all saturated; sigmoid: > 0.99 and < 0.01 both count, 0.5 does not
    model, params, state = dense_then(nn.Tanh(), np.full((1, 3), 50.0), np.zeros(3))
    assert float(gradient_health(model, params, state, (x, y))["saturated"]["1_tanh"]) == 1.0
    model, params, state = dense_then(
        nn.Sigmoid(), np.array([[10.0, -10.0, 0.0, 4.0]]), np.zeros(4)
    )
    h = gradient_health(model, params, state, (x, y))
    assert float(h["saturated"]["1_sigmoid"]) == 0.5  # sigmoid(4) = 0.982 is not saturated


def test_grad_norm_and_update_ratio_per_layer():
    model = nn.mlp((8,), num_classes=3)
    params, state, _ = model.init(jax.random.PRNGKey(0), (5,))
    x, y = batch(10, 5, classes=3)
    updates = jax.tree_util.tree_map(lambda p: 1e-3 * jnp.ones_like(p), params)
    h = gradient_health(model, params, state, (x, y), updates=updates)
    g = jax.grad(lambda p: fnn.ops.softmax_cross_entropy(model.apply(p, state, x)[0], y))(params)
    for layer in ("1_dense", "3_dense"):
        leaves = jax.tree_util.tree_leaves(g[layer])
        want = np.sqrt(sum(np.sum(np.square(leaf)) for leaf in leaves))
        assert float(h["grad_norm"][layer]) == pytest.approx(want, rel=1e-5)
        p = jax.tree_util.tree_leaves(params[layer])
        ratio = (
            1e-3
            * np.sqrt(sum(leaf.size for leaf in p))
            / np.sqrt(sum(np.sum(np.square(leaf)) for leaf in p))
        )
        assert float(h["update_ratio"][layer]) == pytest.approx(ratio, rel=1e-5)
    assert set(h["grad_norm"]) == {"1_dense", "3_dense"} and set(h["dead_relu"]) == {"2_relu"}


def test_nested_activations_are_found_in_a_resnet():
    model = nn.resnet((4, 8), num_classes=3)
    params, state, _ = model.init(jax.random.PRNGKey(0), (8, 8, 3))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
    y_out, acts = layer_activations(model, params, state, x)
    np.testing.assert_allclose(y_out, model.apply(params, state, x)[0], rtol=1e-5, atol=1e-6)
    assert "3_residual_block/0_residual/main/2_relu" in acts and "3_residual_block/1_relu" in acts
    assert len(acts) == 5 and set(health.activation_layers(model).values()) == {"relu"}
    assert set(acts) == set(health.activation_layers(model))


# ---- the drift monitor ---------------------------------------------------------------------------
@fnn.defgate
def forgetful_tanh(x):
    """tanh(x).  Local gradient: 1 - t**2 ... but the VJP below forgets the square."""
    t = jnp.tanh(x)
    return t, t


@forgetful_tanh.defvjp
def forgetful_tanh_vjp(g, t):
    return (g * (1.0 - t),)


def test_drift_is_zero_for_a_correct_model_and_large_for_a_wrong_gate(digits):
    x, y = jnp.asarray(digits.x_train[:64]), jnp.asarray(digits.y_train[:64])
    good = nn.serial(
        nn.Flatten(),
        nn.Dense(32),
        nn.Tanh(),
        nn.Dense(32),
        nn.Sigmoid(),
        nn.Dropout(0.2),
        nn.Dense(16),
        nn.Relu(),
        nn.Dense(10),
    )
    params, state, _ = good.init(jax.random.PRNGKey(0), digits.input_shape)
    h = gradient_health(good, params, state, (x, y), key=jax.random.PRNGKey(1), l2=1e-3)
    assert x.dtype == jnp.float32 and len(h["custom_vs_builtin"]) == 4
    assert max(float(v) for v in h["custom_vs_builtin"].values()) < 1e-5, h["custom_vs_builtin"]
    # the same net with a tanh whose VJP is wrong: the layer before it drifts, the ones after not
    bad = nn.serial(
        nn.Flatten(),
        nn.Dense(32),
        nn.stateless("tanh", forgetful_tanh),
        nn.Dense(32),
        nn.Sigmoid(),
        nn.Dropout(0.2),
        nn.Dense(16),
        nn.Relu(),
        nn.Dense(10),
    )
    h = jax.device_get(gradient_health(bad, params, state, (x, y), key=jax.random.PRNGKey(1)))
    assert h["custom_vs_builtin"]["1_dense"] > 1e-2 and h["custom_vs_builtin"]["8_dense"] < 1e-5
    assert "2_tanh" in h["saturated"]  # a layer named "tanh" counts as one
    row = {
        "step": 0,
        **{
            k: {n: float(v) for n, v in d.items()} if isinstance(d, dict) else d
            for k, d in h.items()
        },
    }
    assert "WARNING" in summarize(row) and "1_dense" in summarize(row).split("WARNING")[1]


# ---- while training ------------------------------------------------------------------------------
def test_fit_measures_every_n_steps_without_changing_training(digits):
    model = nn.mlp((16,))
    opt = make_optimizer("adam", 1e-2)
    plain, _ = fit(model, opt, digits, epochs=2, batch_size=64)
    ts, history = fit(model, opt, digits, epochs=2, batch_size=64, diagnostics=3)
    n = len(digits.x_train) // 64
    steps = [r["step"] for rec in history for r in rec["diagnostics"]]
    assert steps == list(range(0, 2 * n, 3))
    assert [r["epoch"] for r in history[1]["diagnostics"]] == [2] * len(history[1]["diagnostics"])
    for a, b in zip(jax.tree_util.tree_leaves(plain.params), jax.tree_util.tree_leaves(ts.params)):
        np.testing.assert_array_equal(a, b)  # measuring does not touch the trajectory
    assert (
        jax.tree_util.tree_structure(ts.opt_state) == jax.tree_util.tree_structure(plain.opt_state)
        and ts.step == 2 * n
    )
    row = history[1]["diagnostics"][-1]
    assert set(row["grad_norm"]) == {"1_dense", "3_dense"} and set(row["dead_relu"]) == {"2_relu"}
    assert 0 < row["update_ratio"]["1_dense"] < 0.1 and row["custom_vs_builtin"]["1_dense"] < 1e-5
    json.dumps(row)


def test_cli_diagnostics_writes_jsonl_and_png(tmp_path, capsys):
    out = str(tmp_path / "run")
    tiny = [
        "--hidden",
        "16",
        "--lr",
        "0.01",
        "--batch-size",
        "64",
        "--no-progress",
        "--limit",
        "600",
    ]
    assert main(["train", "--epochs", "2", "--out", out, "--diagnostics-every", "4", *tiny]) == 0
    printed = capsys.readouterr().out
    assert "health @ step" in printed and "custom~built-in" in printed
    with open(os.path.join(out, "diagnostics.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    path = os.path.join(out, "diagnostics.jsonl")
    rows = [json.loads(line) for line in open(path)]
    assert [r["step"] for r in rows] == [0, 4, 8, 12] and [r["epoch"] for r in rows] == [1, 1, 2, 2]
    for metric in ("grad_norm", "update_ratio", "custom_vs_builtin", "dead_relu", "saturated"):
        assert metric in rows[0]
    assert all(r["custom_vs_builtin"]["1_dense"] < 1e-5 for r in rows)
    assert all(
        "diagnostics" not in json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))
    )


def test_health_log_drops_rows_past_the_checkpoint_on_resume(tmp_path, capsys):
    rows = [
        {
            "step": s,
            "epoch": 1 + s // 8,
            "loss": 1.0,
            "grad_norm": {"1_dense": 1.0},
            "update_ratio": {"1_dense": 1e-3},
            "custom_vs_builtin": {"1_dense": 1e-8},
            "dead_relu": {"2_relu": 0.0},
            "saturated": {},
        }
        for s in range(0, 24, 4)
    ]
    HealthLog(str(tmp_path)).write(rows)  # epochs 1, 2, 3 measured; say only 2 checkpointed
    path = tmp_path / "diagnostics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 24, "epo')  # cut short by a crash
    log = HealthLog(str(tmp_path), upto_epoch=2, log=print)
    assert [json.loads(line)["step"] for line in open(path)] == [0, 4, 8, 12]
    log.write([{**rows[4], "loss": 0.5}])
    assert [json.loads(line)["step"] for line in open(path)] == [0, 4, 8, 12, 16]
    assert "health @ step 16" in capsys.readouterr().out and log.plot("resumed")
    assert (tmp_path / "diagnostics.png").read_bytes()[:4] == b"\x89PNG"


def test_health_log_without_rows_draws_nothing(tmp_path):
    log = HealthLog(str(tmp_path), upto_epoch=0)
    log.write([])
    assert not log.plot() and not os.path.exists(tmp_path / "diagnostics.png")
