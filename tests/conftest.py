import os

import jax
import numpy as np
import pytest

# CPU unless FNN_TEST_PLATFORM names another (scripts/gpu_check.sh runs tests on the GPU: cuda)
PLATFORM = os.environ.get("FNN_TEST_PLATFORM", "cpu")
if PLATFORM != "cpu":  # pytest-xdist's workers share the accelerator: none takes 75% up front
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
jax.config.update("jax_platforms", PLATFORM)


# pytest-xdist hands out whole files (--dist loadfile) in collection order: the slowest files
# go first, so that none of them starts last while the other workers have nothing left to do.
# Seconds each took alone on a 2-vCPU VM (2026-12-01); files not named follow in their order.
SLOWEST_FILES = (
    "test_sequence.py",  # 190
    "test_docs_examples.py",  # 150 (one process per page, under load)
    "test_gates.py",  # 150
    "test_primitives.py",  # 130
    "test_interop.py",  # 110
    "test_distributed.py",  # 95 (at load 5; real processes: launches of 2 x 4 devices)
    "test_second_order.py",  # 90
    "test_primitive_properties.py",  # 67
    "test_parallel.py",  # 61 (one subprocess with 8 devices)
    "test_nn.py",  # 60
    "test_custom_rules.py",  # 50
    "test_kinks.py",  # 40
    "test_linalg_programs.py",  # 40 (alone, under load)
    "test_nan_propagation.py",  # 40
    "test_remat_policies.py",  # 32
    "test_jax_harnesses.py",  # 30 (JAX's primitive use cases, a sample)
    "test_remat.py",  # 57
    "test_interrupts.py",  # 56
    "test_lowering.py",  # 56 (one subprocess with 8 devices)
    "test_edge_shapes.py",  # 55
    "test_bench.py",  # 54
    "test_cli.py",  # 48
    "test_runtime.py",  # 46
    "test_hypothesis_models.py",  # 47
    "test_reliability.py",  # 47
    "test_run_folders.py",  # 45 (under load; ~25 alone)
    "test_kill_runs.py",  # 40 (under load; forks ~10 runs from one process)
    "test_collectives.py",  # 45 (one subprocess with 8 devices)
)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_auto_num_workers(config):
    """-n auto: the cores this process may run on (its CPU affinity, and a container's CPU
    quota), at most 4. (xdist's own count asks psutil for physical cores, which gives 1 on a
    VM with 2 hyperthreads, and the host's count in a container limited to fewer.)"""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    for path, parse in (
        ("/sys/fs/cgroup/cpu.max", lambda t: t.split()[:2]),  # cgroup v2
        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", lambda t: [t.strip(), None]),
    ):
        try:
            with open(path) as f:
                quota, period = parse(f.read())
            if period is None:
                with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
                    period = f.read().strip()
            if quota not in ("max", "-1"):
                cores = min(cores, max(1, -(-int(quota) // int(period))))
            break
        except (OSError, ValueError):
            continue
    return max(1, min(cores, 4))


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


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
