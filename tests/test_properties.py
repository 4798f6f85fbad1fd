"""hypothesis draws random shapes for the elementwise and broadcasting gates."""

import jax
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fnn
from fnn import ops
from fnn.check import rel_error

BINARY = ["add", "subtract", "multiply", "divide", "maximum", "minimum", "power"]
UNARY = ["exp", "negative", "sigmoid", "tanh", "softplus", "gelu", "silu", "abs", "relu"]


@st.composite
def broadcastable_shapes(draw):
    """Two shapes that broadcast together: a base shape, each side drops leading dims or sets 1s."""
    base = draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))

    def side():
        cut = draw(st.integers(0, len(base)))
        return tuple(1 if draw(st.booleans()) else d for d in base[cut:])

    return side(), side()


def _values(seed, shape, name, second=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    if name in ("power",) and not second or name in ("divide",) and second:
        return rng.uniform(0.5, 2.0, shape)
    if name in ("abs", "relu", "maximum", "minimum"):
        return np.where(x >= 0, x + 0.1, x - 0.1) + (0.05 if second else 0.0)
    return x


def _check(name, args, x64_on):
    gate = getattr(ops, name)  # fnn's own gate, or the lecture's name of a JAX function
    forward = (lambda *a: gate.forward(*a)[0]) if isinstance(gate, fnn.Gate) else gate
    out, ref_pull = jax.vjp(forward, *args)
    ct = np.random.default_rng(1).standard_normal(np.shape(out))
    _, my_pull = fnn.vjp(gate, *args)
    for a, b, x in zip(my_pull(ct), ref_pull(ct), args):
        assert a.shape == np.shape(x) and a.dtype == b.dtype
        assert rel_error(a, b) <= 1e-10, (name, [np.shape(x) for x in args])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from(BINARY), shapes=broadcastable_shapes(), seed=st.integers(0, 2**16))
def test_binary_gates_broadcast_like_jax(name, shapes, seed, x64):
    a = _values(seed, shapes[0], name)
    b = _values(seed + 1, shapes[1], name, second=True)
    _check(name, (a, b), x64)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(UNARY),
    shape=st.lists(st.integers(1, 4), max_size=3),
    seed=st.integers(0, 2**16),
)
def test_unary_gates_any_shape(name, shape, seed, x64):
    _check(name, (_values(seed, tuple(shape), name),), x64)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(shapes=broadcastable_shapes(), seed=st.integers(0, 2**16))
def test_broadcast_to_and_reductions(shapes, seed, x64):
    target = np.broadcast_shapes(*shapes)
    x = np.random.default_rng(seed).standard_normal(shapes[0])
    f = lambda x: ops.sum(ops.broadcast_to(x, shape=target) ** 2, axis=0 if target else None)
    g = lambda x: ops.sum(f(x))
    assert rel_error(fnn.grad(g)(x), jax.grad(g)(x)) <= 1e-10
