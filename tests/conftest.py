import os

import jax
import numpy as np
import pytest

# CPU unless FNN_TEST_PLATFORM names another (scripts/gpu_check.sh runs tests on the GPU: cuda)
PLATFORM = os.environ.get("FNN_TEST_PLATFORM", "cpu")
if PLATFORM != "cpu":  # pytest-xdist's workers share the accelerator: none takes 75% up front
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
jax.config.update("jax_platforms", PLATFORM)


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
