"""locate_divergence names the gate whose hand-written VJP is wrong, with its call site."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import ops
from fnn.check import locate_divergence


@fnn.defgate
def wrong_tanh(x):
    """tanh(x).  Local gradient: 1 - t**2 ... but the VJP below forgets the square."""
    t = jnp.tanh(x)
    return t, t


@wrong_tanh.defvjp
def wrong_tanh_vjp(g, t):
    return (g * (1.0 - t),)  # wrong: should be g * (1 - t * t)


@fnn.defgate
def wrong_shape(x):
    """2 x.  Local gradient: 2 ... but the VJP returns a gradient of the wrong shape."""
    return 2.0 * x, None


@wrong_shape.defvjp
def wrong_shape_vjp(g, saved):
    return (jnp.sum(g, axis=0),)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    params = {
        "w1": jnp.asarray(rng.standard_normal((6, 8)) * 0.5, jnp.float32),
        "b1": jnp.asarray(rng.standard_normal(8) * 0.1, jnp.float32),
        "w2": jnp.asarray(rng.standard_normal((8, 8)) * 0.5, jnp.float32),
        "b2": jnp.asarray(rng.standard_normal(8) * 0.1, jnp.float32),
        "w3": jnp.asarray(rng.standard_normal((8, 3)) * 0.5, jnp.float32),
        "b3": jnp.zeros(3, jnp.float32),
    }
    x = jnp.asarray(rng.standard_normal((5, 6)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 5))
    return params, x, y


def mlp(params, x, y, act=ops.tanh, act2=ops.relu):
    h = act(ops.affine(x, params["w1"], params["b1"]))  # first activation
    h = act2(ops.affine(h, params["w2"], params["b2"]))  # second activation
    return ops.softmax_cross_entropy(ops.affine(h, params["w3"], params["b3"]), y)


def _line(marker):
    lines, start = inspect.getsourcelines(mlp)
    return start + next(i for i, text in enumerate(lines) if marker in text)


def test_correct_model_has_no_divergence():
    params, x, y = _data()
    result = locate_divergence(mlp, params, x, y)
    assert result.ok and len(result) == 0
    assert result.checked == 6  # 3 affine, 2 activations, the loss
    assert "agree" in str(result)


def test_wrong_user_gate_is_named_with_its_call_site():
    params, x, y = _data()
    model = lambda p, x, y: mlp(p, x, y, act=wrong_tanh)
    # the full gradients differ (custom vs built-in) ...
    mine, ref = fnn.grad(model)(params, x, y), jax.grad(model)(params, x, y)
    assert not np.allclose(mine["w1"], ref["w1"], rtol=1e-3)
    # ... and the replay names the one gate responsible, not the correct gates around it
    result = locate_divergence(model, params, x, y)
    assert not result.ok
    assert [d.gate for d in result] == ["wrong_tanh"]
    bad = result[0]
    assert bad.site == f"{__file__}:{_line('first activation')}"
    assert bad.inputs == ("f32[5,8]",) and bad.outputs == ("f32[5,8]",)
    assert bad.error > 1e-2
    text = str(result)
    assert "wrong_tanh" in text and f"test_divergence.py:{_line('first activation')}" in text


def test_two_wrong_gates_first_in_backward_order_first():
    params, x, y = _data()
    model = lambda p, x, y: mlp(p, x, y, act=wrong_tanh, act2=wrong_tanh)
    result = locate_divergence(model, params, x, y)
    assert [d.gate for d in result] == ["wrong_tanh", "wrong_tanh"]
    assert result[0].site.endswith(f":{_line('second activation')}")
    assert result[1].site.endswith(f":{_line('first activation')}")
    assert result[0].record > result[1].record


def test_a_vjp_that_breaks_its_contract_is_reported():
    params, x, y = _data()
    model = lambda p, x, y: mlp(p, x, y, act=wrong_shape)
    result = locate_divergence(model, params, x, y)
    assert [d.gate for d in result] == ["wrong_shape"]
    assert "VJPContractError" in result[0].message
    assert result[0].error == float("inf")


def test_argnums_and_float64(x64):
    params, x, y = _data()
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    model = lambda p, x, y: mlp(p, x, y, act=wrong_tanh)
    # differentiating x only: the wrong gate still lies on the path from x to the loss
    result = locate_divergence(model, params, x.astype(jnp.float64), y, argnums=1)
    assert [d.gate for d in result] == ["wrong_tanh"]
    assert locate_divergence(mlp, params, x.astype(jnp.float64), y, argnums=(0, 1)).ok


@fnn.defgate
def looped_double(x):
    """2 x, by a while loop JAX cannot reverse.  Local gradient: 2."""
    y = jax.lax.while_loop(lambda c: c[0] < 1, lambda c: (c[0] + 1, 2.0 * c[1]), (0, x))[1]
    return y, None


@looped_double.defvjp
def looped_double_vjp(g, saved):
    return (2.0 * g,)


def test_a_forward_jax_cannot_differentiate_is_reported_not_trusted():
    params, x, y = _data()
    model = lambda p, x, y: mlp(p, x, y, act=looped_double)
    result = locate_divergence(model, params, x, y)
    assert not result.ok and [d.gate for d in result] == ["looped_double"]
    assert result[0].message.startswith("no reference: jax.vjp of its forward raised")
    assert np.isnan(result[0].error) and result[0].errors == (None,)
    assert "no reference" in str(result)
