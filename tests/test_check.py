"""check_grads: custom (fnn.grad) vs built-in (jax.grad) vs float64 central differences."""

import json

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import ops
from fnn.check import check_grads
from fnn.check.grads import GradReport


def _params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = {
        "w1": rng.standard_normal((10, 32)) * 0.3,
        "b1": rng.standard_normal(32) * 0.1,
        "w2": rng.standard_normal((32, 4)) * 0.3,
        "b2": np.zeros(4),
    }
    params = {k: jnp.asarray(v, dtype) for k, v in params.items()}
    x = jnp.asarray(rng.standard_normal((16, 10)), dtype)
    y = jnp.asarray(rng.integers(0, 4, 16))
    return params, x, y


def mlp_loss(p, x, y, act=ops.tanh):
    h = act(ops.affine(x, p["w1"], p["b1"]))
    return ops.softmax_cross_entropy(ops.affine(h, p["w2"], p["b2"]), y)


@fnn.defgate
def bad_tanh(x):
    """tanh(x).  Local gradient: 1 - t**2 (the VJP below forgets the square)."""
    t = jnp.tanh(x)
    return t, t


@bad_tanh.defvjp
def bad_tanh_vjp(g, t):
    return (g * (1.0 - t),)


def test_float64_model_passes(x64):
    params, x, y = _params(jnp.float64)
    report = check_grads(mlp_loss, params, x, y)
    assert report.ok, str(report)
    assert report.dtype == "float64" and report.numeric_dtype == "float64"
    assert [leaf.name for leaf in report.leaves] == ["b1", "b2", "w1", "w2"]
    for leaf in report.leaves:
        assert leaf.verdict == "ok"
        assert leaf.custom_vs_builtin.rel < 1e-12
        assert leaf.custom_vs_numeric.rel < 1e-8
        assert leaf.custom_vs_builtin.cos > 1 - 1e-12
        assert leaf.sampled == min(20, int(np.prod(leaf.shape)))


def test_float32_model_is_checked_against_float64_differences_without_leaving_x64_on():
    params, x, y = _params(jnp.float32)
    assert not jax.config.jax_enable_x64
    report = check_grads(mlp_loss, params, x, y, seed=3)
    assert not jax.config.jax_enable_x64  # restored
    assert report.ok, str(report)
    assert report.dtype == "float32" and report.numeric_dtype == "float64"
    assert report["w1"].custom_vs_numeric.rel < 1e-5  # float32 gradients vs exact: ~1e-7


def test_float32_dtype_aware_check_passes_where_a_fixed_step_check_fails():
    params, x, y = _params(jnp.float32)
    # the fixed-step check of the usual tools: float32 differences with h = 1e-6 are rounding
    # noise (eps32 * |f| / h ~ 0.1), so it blames a correct gradient ...
    fixed = check_grads(mlp_loss, params, x, y, numeric_dtype=None, step=1e-6)
    assert not fixed.ok
    assert fixed.numeric_dtype == "float32"
    for leaf in fixed.leaves:
        assert leaf.custom_vs_numeric.rel > 1e-2
        # ... which the report attributes to the differences, as custom and built-in agree
        assert leaf.verdict == "finite differences unreliable here"
    # dtype-aware: float64 differences (default) or a float32 step of cbrt(eps32) both pass
    assert check_grads(mlp_loss, params, x, y).ok
    own = check_grads(mlp_loss, params, x, y, numeric_dtype=None)
    assert own.ok, str(own)
    assert abs(own.leaves[0].step - np.finfo(np.float32).eps ** (1 / 3)) < 1e-9


def kinked(p, x, v):
    return ops.sum(ops.relu(x @ p["W"] + p["b"]) * v)


def test_relu_kink_is_reported_as_a_kink_not_a_failure(x64):
    # x @ W + b = [2 - 2, -0.5 + 1] = [0, 0.5]: unit 0 sits exactly on the ReLU's kink
    p = {"W": jnp.array([[1.0, -1.0], [0.5, 0.25]]), "b": jnp.array([-2.0, 1.0])}
    x, v = jnp.array([[1.0, 2.0]]), jnp.array([3.0, -2.0])
    report = check_grads(kinked, p, x, v)
    assert report.ok, str(report)
    b = report["b"]
    assert b.verdict == "ok" and len(b.kinks) == 1
    kink = b.kinks[0]
    assert kink["index"] == [0]
    assert abs(kink["backward"]) < 1e-6 and abs(kink["forward"] - 3.0) < 1e-6
    assert kink["custom"] == 0.0  # fnn's relu takes the left slope at 0
    assert len(report["W"].kinks) == 2
    assert "kink" in str(report)
    # a plain central difference is half-way between the slopes: without the kink check the
    # correct gradient would have failed
    h = 1e-6
    central = (
        kinked({**p, "b": p["b"].at[0].add(h)}, x, v)
        - kinked({**p, "b": p["b"].at[0].add(-h)}, x, v)
    ) / (2 * h)
    assert abs(float(central) - 1.5) < 1e-6


def test_wrong_user_gate_is_custom_wrong():
    params, x, y = _params(jnp.float32)
    report = check_grads(lambda p, x, y: mlp_loss(p, x, y, act=bad_tanh), params, x, y)
    assert not report.ok
    assert report["w1"].verdict == "custom wrong"
    assert report["b1"].verdict == "custom wrong"
    assert report["w2"].verdict == "ok"  # after the wrong gate in backward order: unaffected
    assert report["w1"].builtin_vs_numeric.rel < 1e-5
    assert "custom wrong" in str(report) and "FAILED" in str(report)


def test_several_argnums_name_leaves_by_argument(x64):
    params, x, y = _params(jnp.float64)
    report = check_grads(mlp_loss, params, x, y, argnums=(0, 1))
    assert report.ok
    assert [leaf.name for leaf in report.leaves] == [
        "arg0/b1",
        "arg0/b2",
        "arg0/w1",
        "arg0/w2",
        "arg1",
    ]


def test_json_round_trip_and_markdown():
    params, x, y = _params(jnp.float32)
    report = check_grads(mlp_loss, params, x, y, seed=7)
    text = report.to_json()
    data = json.loads(text)
    for key in ("seed", "dtype", "device", "rtol", "numeric_rtol", "numeric_dtype", "leaves", "ok"):
        assert key in data
    assert data["seed"] == 7 and data["dtype"] == "float32" and data["ok"] is True
    again = GradReport.from_json(text)
    assert again == report
    assert again.to_json() == text
    md = report.to_markdown()
    assert md.count("\n|") >= 6 and "| w1 |" in md
    # the same seed gives the same report (bar the device-independent fields, all of it)
    assert check_grads(mlp_loss, params, x, y, seed=7).to_json() == text


def test_one_rel_error_for_numpy_jax_pytrees_and_jit():
    from fnn.check import rel_error

    a, b = np.array([1.0, -2.0, 0.0]), np.array([1.0, -2.5, 0.0])
    assert rel_error(a, b) == 0.5 / 4.5 and isinstance(rel_error(a, b), float)
    assert rel_error(jnp.asarray(a), jnp.asarray(b)) == rel_error(a, b)
    inside = jax.jit(lambda x, y: rel_error({"p": x, "q": 2 * x}, {"p": y, "q": 2 * y}))
    np.testing.assert_allclose(float(inside(a, b)), 1.0 / 9.0, rtol=1e-6)  # over all leaves
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    with np.testing.assert_raises(ValueError):
        rel_error(np.zeros(3), np.zeros(4))


def test_one_tolerance_table():
    from fnn.check.tolerances import TOLERANCES, tolerance

    assert set(TOLERANCES) == {"forward", "gate", "model", "numeric", "transform", "harness"}
    for row in TOLERANCES.values():
        assert set(row) == {"float64", "float32", "float16", "bfloat16"}
    assert tolerance("gate", jnp.float32) == tolerance("gate", "float32") == 2e-5
    assert tolerance("model", "int32") == tolerance("model", "float32")  # unknown: float32's
    with np.testing.assert_raises(ValueError):
        tolerance("nope", "float32")
