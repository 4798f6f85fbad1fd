import jax
import numpy as np
import pytest

jax.config.update("jax_platforms", "cpu")


@pytest.fixture
def x64():
    """Run a test in float64: enables jax_enable_x64 inside the test and restores it after."""
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
