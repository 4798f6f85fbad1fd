"""The stand-alone core: pytree gate inputs and outputs, forwards that never record, pickling,
and the public trace."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import ops


@fnn.defgate
def linear(p, x):
    """x @ p["w"] + p["b"] with a parameter dict as one input.  Local gradients: dw = x.T g,
    db = sum g, dx = g w.T."""
    return x @ p["w"] + p["b"], (p, x)


@linear.defvjp
def linear_vjp(g, saved):
    p, x = saved
    return {"w": x.T @ g, "b": jnp.sum(g, axis=0)}, g @ p["w"].T


@fnn.defgate
def zero_rule(p, x):
    """x @ p["w"].  Local gradient: deliberately zero for p (the issue's reproducer)."""
    return x @ p["w"], None


@zero_rule.defvjp
def zero_rule_vjp(g, saved):
    return {"w": jnp.zeros((3, 2))}, None


def test_a_dict_input_runs_the_gates_own_rule():
    # a gate whose positional input is a dict must run its own VJP, not record inner gates
    g = fnn.grad(lambda p: ops.sum(zero_rule(p, jnp.ones((4, 3)))))({"w": jnp.ones((3, 2))})
    np.testing.assert_array_equal(g["w"], np.zeros((3, 2)))
    p = {"w": jnp.arange(6.0).reshape(3, 2), "b": jnp.array([1.0, -1.0])}
    x = jnp.arange(12.0).reshape(4, 3) / 10
    f = lambda p, x: ops.sum(linear(p, x) ** 2)
    mine = fnn.grad(f, argnums=(0, 1))(p, x)
    ref = jax.grad(f, argnums=(0, 1))(p, x)
    for a, b in zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_a_pytree_gradient_of_the_wrong_structure_is_named():
    @fnn.defgate(name="bad_tree")
    def bad_tree(p):
        """sum of p's leaves.  Local gradient: ones (its VJP forgets a key)."""
        return p["a"] + p["b"], None

    bad_tree.defvjp(lambda g, saved: ({"a": g},))
    with pytest.raises(fnn.VJPContractError, match="gate 'bad_tree'.*structure"):
        fnn.grad(lambda p: ops.sum(bad_tree(p)))({"a": jnp.ones(2), "b": jnp.ones(2)})


def test_a_dict_output():
    @fnn.defgate
    def two(x):
        """{'double': 2x, 'square': x*x}.  Local gradients: 2 and 2x."""
        return {"double": 2 * x, "square": x * x}, x

    @two.defvjp
    def two_vjp(g, x):
        return (2 * g["double"] + 2 * x * g["square"],)

    x = jnp.arange(3.0)
    np.testing.assert_allclose(fnn.grad(lambda x: ops.sum(two(x)["square"]))(x), 2 * x)
    np.testing.assert_allclose(fnn.grad(lambda x: ops.sum(two(x)["double"]))(x), [2, 2, 2])


def test_a_forward_that_closes_over_a_traced_value_is_refused():
    captured = {}

    @fnn.defgate
    def scaled(x):
        """x * w with w from a closure.  Local gradient: w (but w's own gradient is lost)."""
        return x * captured["w"], None

    scaled.defvjp(lambda g, saved: (g,))

    def f(x):
        captured["w"] = x * 2.0
        return ops.sum(scaled(x))

    with pytest.raises(fnn.GateError, match="forward of gate 'scaled'.*closure or a global"):
        fnn.grad(f)(jnp.ones(3))


def test_gates_pickle_by_reference():
    for gate in (ops.relu, ops.conv2d, linear):
        assert pickle.loads(pickle.dumps(gate)) is gate


def test_public_trace():
    tr = fnn.trace(lambda x, y: ops.sum(ops.tanh(x) * y), jnp.ones(3), 2.0, argnums=0)
    assert isinstance(tr, fnn.Trace)
    # ops.tanh and ops.sum are jnp's: the gates of their primitives, drawn under the lecture's names
    assert [r.gate.name for r in tr.tape.records] == ["lax.tanh", "lax.mul", "lax.reduce_sum"]
    assert [r.gate.lecture for r in tr.tape.records] == ["tanh", "multiply", "sum"]
    (node,) = [n for _, _, n, _ in tr.inputs()]
    cts = tr.backward(tr.seeds())
    dx, dy = tr.gradients(cts)
    assert dy is None
    np.testing.assert_allclose(dx, 2.0 * (1 - np.tanh(1.0) ** 2) * np.ones(3), rtol=1e-6)
    np.testing.assert_allclose(cts[node], dx)


def test_a_gate_inside_a_transform_inside_f_is_still_differentiated(x64):
    # under a vmap inside f, the gate's call is batched: its jaxpr is interpreted primitive by
    # primitive (the gate's fused rule needs the unbatched shapes), and the gradient is exact
    calls = []

    @fnn.defgate
    def softsign(x):
        """x / (1 + |x|).  Local gradient: 1 / (1 + |x|)**2."""
        return x / (1 + jnp.abs(x)), x

    @softsign.defvjp
    def softsign_vjp(g, x):
        calls.append(x.shape)
        return (g / (1 + jnp.abs(x)) ** 2,)

    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)))
    f = lambda x: jnp.sum(jax.vmap(softsign)(x) ** 2)
    np.testing.assert_allclose(fnn.grad(f)(x), jax.grad(f)(x), rtol=1e-12)
    assert calls == []  # batched: not the gate's own rule
    g = lambda x: jnp.sum(softsign(x) ** 2)
    np.testing.assert_allclose(fnn.grad(g)(x), jax.grad(g)(x), rtol=1e-12)
    assert calls == [(4, 3)]  # unbatched: the gate's rule
