"""fnn's gradient is JAX's at the points where a derivative is a convention: kinks (relu, abs at
0), ties (max, maximum, sort, pooling windows), edges of a domain (sqrt, log at 0; pow at 0),
NaN and infinite inputs where a rule has a select. Parametrized over the registry
(fnn.registry: fnn's own gates and the JAX primitives'): every rule declares its kink cases
(`gate.defkinks(...)`) or that it has none (`gate.defkinks(smooth=True)`), and at each kink
case its hand-written VJP must equal jax.vjp of its forward to 1e-12, NaNs and infinities in
the same places. One compiled program per rule.

Also: the named gates agree with the JAX functions their forwards are (and with fnn's rules for
those functions' primitives) at their kinks, values included.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import fnn
from fnn import ops
from fnn.check.gates import kink_results

RULES = dict(fnn.registry)
WITH_KINKS = sorted(n for n, g in RULES.items() if callable(g.kinks))


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_declares_its_kinks(name):
    gate = RULES[name]
    assert gate.kinks is not None, (
        f"{name}: declare the points where its derivative is a convention with "
        f"@{gate.name}.defkinks (a function of the dtype giving Cases), or "
        f"{gate.name}.defkinks(smooth=True) if it has none"
    )
    if callable(gate.kinks):
        assert gate.kink_cases("float64"), f"{name}: defkinks gave no cases"


def _same(a, b, what):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb), what
    for x, y in zip(la, lb):
        if x.dtype == jax.dtypes.float0:
            continue
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-300, equal_nan=True, err_msg=what)


@pytest.mark.parametrize("name", WITH_KINKS)
def test_gradient_at_kinks_is_jax(name):
    for label, out_mine, out_ref, mine, ref in kink_results(RULES[name]):
        _same(out_mine, out_ref, f"{name} at {label}: forward")
        _same(mine, ref, f"{name} at {label}: gradient (fnn, then jax.vjp)")


def test_kink_cases_are_checked_by_the_gate_checker():
    """check_gate judges kink cases against JAX: a rule with another convention fails."""
    from fnn.check.gates import check_gate

    other = fnn.defgate(lambda x: (jnp.abs(x), x))  # abs with sign(x) (0 at 0): not JAX's 1
    other.defvjp(lambda g, x: (g * jnp.sign(x),))
    other.defcases(lambda rng, dtype: [fnn.Case((np.array([1.5, -2.0], dtype),))])
    other.defkinks(lambda dtype: [fnn.Case((np.array([0.0, 1.0], dtype),))])
    report = check_gate("abs0", other)
    assert not report.ok and any("kink" in p for p in report.problems), report.problems
    other.defvjp(lambda g, x: (jnp.where(x >= 0, g, -g),))
    assert check_gate("abs1", other).ok


# ---- named gates against the JAX functions they follow -----------------------------------------
X = np.array([0.0, -0.0, 1.0, -1.0, 6.0, 2.0, np.inf, -np.inf, np.nan])
TIES = np.array([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 2.0, 2.0], [np.nan, 1.0, 1.0, 0.0]])
IMAGE = np.array(
    [[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 2.0, 2.0], [0.0, 1.0, 1.0, 0.0]]
)[None, :, :, None]
NAMED = {  # name: (fnn's gate, the JAX function, the input)
    "abs": (ops.abs, jnp.abs, X),
    "relu": (ops.relu, jax.nn.relu, X),
    "relu6": (ops.relu6, jax.nn.relu6, X),
    "leaky_relu": (
        lambda x: ops.leaky_relu(x, alpha=0.1),
        lambda x: jax.nn.leaky_relu(x, negative_slope=0.1),
        X,
    ),
    "elu": (lambda x: ops.elu(x, alpha=0.5), lambda x: jax.nn.elu(x, alpha=0.5), X),
    "maximum": (lambda x: ops.maximum(x, 1.0), lambda x: jnp.maximum(x, 1.0), X),
    "minimum": (lambda x: ops.minimum(x, -0.0), lambda x: jnp.minimum(x, -0.0), X),
    "max": (lambda x: ops.max(x, axis=1), lambda x: jnp.max(x, axis=1), TIES),
    "maxout": (
        lambda x: ops.maxout(x, pieces=2),
        lambda x: jnp.max(x.reshape(3, 2, 2), axis=-1),
        TIES,
    ),
    "max_pool2d": (
        lambda x: ops.max_pool2d(x, window=2, stride=1),
        lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 1, 1, 1), "VALID"),
        IMAGE,
    ),
    "power": (
        lambda x: ops.power(x, jnp.zeros_like(x)),
        lambda x: jnp.power(x, jnp.zeros_like(x)),
        X,
    ),
    "power 0.5": (
        lambda x: ops.power(x, jnp.full_like(x, 0.5)),
        lambda x: jnp.power(x, jnp.full_like(x, 0.5)),
        X,
    ),
    "sqrt": (ops.sqrt, jnp.sqrt, X),
    "log": (ops.log, jnp.log, X),
    "sigmoid": (ops.sigmoid, jax.nn.sigmoid, X),
    "softplus": (ops.softplus, jax.nn.softplus, X),
    "sign": (ops.sign, jnp.sign, X),
    "round": (ops.round, jnp.round, X * 0.5),
}


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_gate_is_its_jax_function_at_kinks(name, x64):
    """fnn.grad of the named gate, fnn.grad of the JAX function (fnn's primitive rules) and
    jax.grad of the JAX function: one gradient, NaNs included; and one forward value."""
    gate, jax_fn, x = NAMED[name]
    x = jnp.asarray(x)
    weights = jnp.arange(1.0, 1.0 + jax.eval_shape(jax_fn, x).size).reshape(
        jax.eval_shape(jax_fn, x).shape
    )
    loss = lambda f: lambda x: jnp.sum(f(x) * weights)
    _same(gate(x), jax_fn(x), f"{name}: forward")
    expected = jax.jit(jax.grad(loss(jax_fn)))(x)  # compiled, as fnn.grad is: XLA decides 0 * inf
    _same(jax.jit(fnn.grad(loss(gate)))(x), expected, f"{name}: fnn.grad of the gate")
    _same(jax.jit(fnn.grad(loss(jax_fn)))(x), expected, f"{name}: fnn.grad of {jax_fn}")
