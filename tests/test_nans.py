"""fnn.debug_nans names the first gate, forward or backward, that made a NaN or inf."""

import jax
import jax.numpy as jnp
import pytest

import fnn
from fnn import ops


@fnn.defgate
def bad_inverse(x):
    """1 / (x + 1).  Local gradient: -1 / (x + 1)**2 (the VJP below divides by zero on purpose)."""
    return 1.0 / (x + 1.0), x


@bad_inverse.defvjp
def bad_inverse_vjp(g, x):
    return (-g / (x * 0.0),)


def log_model(x):
    h = ops.relu(x)
    return ops.sum(ops.log(h))  # log of 0 where x <= 0


def test_log_of_zero_is_named_in_the_forward():
    with fnn.debug_nans(), pytest.raises(fnn.NanOriginError) as info:
        fnn.grad(log_model)(jnp.array([1.0, 0.0, -2.0]))
    e = info.value
    assert e.gate == "lax.log" and e.phase == "forward"  # ops.log is jnp.log
    assert "test_nans.py" in e.site and "-inf" in str(e) and "input 0: f32[3] in [0, 1]" in str(e)


def test_user_gate_dividing_by_zero_in_its_vjp_is_named():
    with fnn.debug_nans(), pytest.raises(fnn.NanOriginError) as info:
        fnn.grad(lambda x: ops.sum(ops.tanh(bad_inverse(x))))(jnp.array([1.0, 2.0]))
    assert info.value.gate == "bad_inverse" and info.value.phase == "backward (VJP)"
    assert "upstream gradient" in str(info.value)


def test_forward_only_calls_are_checked_too_and_bad_data_is_flagged():
    with fnn.debug_nans(), pytest.raises(fnn.NanOriginError, match="upstream data"):
        ops.exp(jnp.array([jnp.nan, 1.0]))


def test_inactive_outside_the_block_and_skipped_under_jit():
    assert jnp.isneginf(log_model(jnp.array([0.0, 1.0])))
    with fnn.debug_nans():
        out = jax.jit(log_model)(jnp.array([0.0, 1.0]))  # tracers: nothing concrete to check
    assert jnp.isneginf(out)
