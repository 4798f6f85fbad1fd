"""Every gate in fnn.registry, checked at its own test cases: hand-written VJP against jax.vjp of
the same forward (float64 and float32) and against central differences (float64).

Parametrized over the registry itself, so a gate without test cases fails here.
"""

import jax
import numpy as np
import pytest

import fnn
from fnn.check.gates import NUMERIC_TOLERANCE, TOLERANCE, check_gate_case, gate_functions, cast_case

GATES = sorted(fnn.registry)


def test_registry_is_complete():
    expected = {
        "add", "subtract", "multiply", "divide", "negative", "power", "exp", "log", "sqrt", "abs",
        "maximum", "minimum", "where", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "maxout",
        "softplus", "gelu", "silu", "matmul", "affine", "transpose", "reshape", "broadcast_to",
        "concatenate", "take", "index", "stop_gradient", "sum", "mean", "max", "logsumexp",
        "softmax", "log_softmax", "softmax_cross_entropy", "svm_loss", "mse", "l2_penalty",
        "conv2d", "max_pool2d", "avg_pool2d", "batch_norm", "layer_norm", "dropout",
    }
    assert expected <= set(fnn.registry), sorted(expected - set(fnn.registry))


@pytest.mark.parametrize("name", GATES)
def test_gate_is_declared_fully(name):
    gate = fnn.registry[name]
    assert gate.vjp is not None, f"gate '{name}' has no VJP"
    assert gate.cases is not None, f"gate '{name}' has no test cases (@{name}.defcases)"
    assert gate.__doc__ and "gradient" in gate.__doc__.lower(), \
        f"gate '{name}' docstring must state its local gradient"
    assert len(gate.cases(np.random.default_rng(0), "float64")) >= 1


@pytest.mark.parametrize("name", GATES)
def test_vjp_matches_jax_float64(name, x64):
    gate = fnn.registry[name]
    rng = np.random.default_rng(1)
    for case in gate.cases(np.random.default_rng(0), "float64"):
        r = check_gate_case(gate, case, "float64", rng)
        assert r["out"] <= 1e-12, (name, case.label, r)
        assert r["vs_jax"] <= TOLERANCE["float64"], (name, case.label, r)
        if r["vs_numeric"] is not None:
            assert r["vs_numeric"] <= NUMERIC_TOLERANCE, (name, case.label, r)


@pytest.mark.parametrize("name", GATES)
def test_vjp_matches_jax_float32(name):
    gate = fnn.registry[name]
    rng = np.random.default_rng(2)
    for case in gate.cases(np.random.default_rng(0), "float32"):
        r = check_gate_case(gate, case, "float32", rng, numeric=False)
        assert r["vs_jax"] <= TOLERANCE["float32"], (name, case.label, r)


@pytest.mark.parametrize("name", GATES)
def test_vjp_under_jit_and_vmap(name, x64):
    """The recorded VJP of the first case compiles under jit and batches under vmap."""
    gate = fnn.registry[name]
    case = gate.cases(np.random.default_rng(0), "float64")[0]
    args = cast_case(case, "float64")
    diff, forward, recorded = gate_functions(gate, args, case.kwargs)
    dargs = [args[i] for i in diff]

    def loss_fnn(*d):
        return fnn.ops.sum(_first(recorded(*d)) ** 2)

    def loss_ref(*d):
        return jax.numpy.sum(_first(forward(*d)) ** 2)

    argnums = tuple(range(len(dargs)))
    eager = fnn.grad(loss_fnn, argnums=argnums)(*dargs)
    jitted = jax.jit(fnn.grad(loss_fnn, argnums=argnums))(*dargs)
    ref = jax.grad(loss_ref, argnums=argnums)(*dargs)
    for a, b, c in zip(eager, jitted, ref):
        np.testing.assert_allclose(a, c, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(b, c, rtol=1e-9, atol=1e-12)
    # vmap over a stacked pair of the same inputs (scaled), per-example gradients
    stacked = [jax.numpy.stack([d, 0.5 * d]) for d in dargs]
    per_ex = jax.vmap(fnn.grad(loss_fnn, argnums=argnums))(*stacked)
    per_ref = jax.vmap(jax.grad(loss_ref, argnums=argnums))(*stacked)
    for a, c in zip(per_ex, per_ref):
        np.testing.assert_allclose(a, c, rtol=1e-9, atol=1e-12)


def _first(out):
    return out[0] if isinstance(out, tuple) else out
