"""Every gate in fnn.registry, checked at its own test cases by the gate checker
(fnn.check.gates, also behind `python -m fnn gradcheck`): hand-written VJP against jax.vjp of
the same forward (float64 and float32), against central differences (float64), eagerly and
under jit, vmap, grad(vmap) and vmap(grad). Each gate is checked once per test run.

Parametrized over the registry itself, so a gate without test cases fails here.
"""

import numpy as np
import pytest

import fnn
from fnn.check import check_gates
from fnn.check.gates import CHECKS
from fnn.check.tolerances import tolerance

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
def test_vjp_matches_jax_numerics_and_transforms(name):
    """The gate checker (fnn.check.check_gates, as docs/checking.md shows it), once per gate:
    every case in float64 (forward, vs jax.vjp, vs central differences) and float32 (vs
    jax.vjp); eager, jit, vmap, grad(vmap) and vmap(grad) on the first case."""
    (report,) = check_gates({name: fnn.registry[name]}, kinks=False)  # kinks: tests/test_kinks.py
    assert report.gate == name and not report.errors, (name, report.errors)
    f64 = [c for c in report.cases if c.dtype == "float64"]
    f32 = [c for c in report.cases if c.dtype == "float32"]
    assert len(f64) == len(fnn.registry[name].cases(np.random.default_rng(0), "float64")) >= 1
    assert len(f32) == len(fnn.registry[name].cases(np.random.default_rng(0), "float32"))
    for c in f64:
        assert c.forward <= 1e-12, (name, c)
        assert c.vs_jax <= tolerance("gate", "float64") == 1e-10, (name, c)
        assert c.vs_numeric is None or c.vs_numeric <= tolerance("numeric", "float64") == 1e-6, \
            (name, c)
    for c in f32:
        assert c.vs_jax <= tolerance("gate", "float32") == 2e-5, (name, c)
    for t in CHECKS:  # eager and under jit, vmap, grad(vmap), vmap(grad): as jax.vjp
        assert report.transforms[t] is True, (name, t, report.transforms)
    assert report.ok, report.verdict
