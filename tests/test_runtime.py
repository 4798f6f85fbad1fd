"""fnn.runtime.tune_cpu: the process-wide CPU settings of `python -m fnn` (XLA flag, malloc)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np

from fnn import runtime

CHILD = r"""
import importlib.util, json, os, sys
# fnn/runtime.py alone (importing the fnn package would already tune, see tune_on_import)
spec = importlib.util.spec_from_file_location("fnn_runtime_alone", sys.argv[1])
alone = importlib.util.module_from_spec(spec)
spec.loader.exec_module(alone)
tune_cpu = alone.tune_cpu
done = tune_cpu()
import jax, jax.numpy as jnp
import fnn
from fnn import nn
model = nn.cnn((4, 8), 10)
params, state, _ = model.init(jax.random.PRNGKey(0), (8, 8, 3))
x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))
y = jnp.arange(4) % 10
def loss(p):
    out, _ = model.apply(p, state, x, train=True)
    return fnn.ops.softmax_cross_entropy(out, y)
g_custom, g_builtin = jax.jit(lambda p: (fnn.grad(loss)(p), jax.grad(loss)(p)))(params)
err = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30)) for a, b in
          zip(jax.tree_util.tree_leaves(g_custom), jax.tree_util.tree_leaves(g_builtin)))
again = tune_cpu()
print(json.dumps({"done": done, "again": again, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                  "err": err}))
"""


def child(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "FNN_NO_TUNE")}
    env.update(env_extra, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, "-c", CHILD, runtime.__file__],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_tune_cpu_before_backend_sets_flag_and_malloc():
    out = child({})
    done = out["done"]
    if runtime.jaxlib_knows_ynn_flag():
        assert done["xla_flags"] == f"{runtime.YNN_FLAG}={runtime.YNN_VALUE}"
        assert out["xla_flags"].strip() == done["xla_flags"]
    else:
        assert done["xla_flags"] is None and "no " + runtime.YNN_FLAG in " ".join(done["notes"])
    if sys.platform.startswith("linux") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith(
        "glibc"
    ):
        assert done["malloc"] is True
    # the gradients are the same computation: hand-written == jax.grad under the tuned backend
    assert out["err"] < 1e-5, out
    # called again after the backend started: nothing changes, and it says why
    assert out["again"]["xla_flags"] is None and out["again"]["malloc"] is False
    assert "already started" in out["again"]["notes"][0]


def test_user_xla_flags_win():
    mine = f"{runtime.YNN_FLAG}=individual_dot"
    if not runtime.jaxlib_knows_ynn_flag():
        mine = "--xla_cpu_enable_fast_math=false"
    out = child({"XLA_FLAGS": mine})
    assert out["xla_flags"].count("ynn_fusion_type") == mine.count("ynn_fusion_type")
    assert mine in out["xla_flags"] and out["err"] < 1e-5


def test_opt_out_keeps_defaults():
    out = child({"FNN_NO_TUNE": "1"})
    assert out["done"] == {
        "xla_flags": None,
        "malloc": False,
        "notes": ["FNN_NO_TUNE is set: JAX's defaults kept"],
    }
    assert out["xla_flags"] == ""


def test_in_process_after_backend_is_a_no_op():
    jax.devices()  # the backend is running in the test process
    env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    done = runtime.tune_cpu(environ=env)
    assert env == {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    assert done["xla_flags"] is None and not done["malloc"]
    assert "already started" in done["notes"][0]
    np.testing.assert_equal(runtime.backend_started(), True)


def test_cli_entry_tunes_and_no_tune_opts_out():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "FNN_NO_TUNE")}
    env.update(FNN_DEBUG="1", JAX_PLATFORMS="cpu")
    for extra in ([], ["--no-tune"]):
        r = subprocess.run(
            [sys.executable, "-m", "fnn", "graph", "--help", *extra],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        # --help exits before the command runs: tuning happens only for real commands
        assert "CPU tuning" not in r.stderr
        assert "--no-tune" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "fnn", "demo"], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (
        "fnn: CPU tuning" in r.stderr
        and "'malloc': True" in r.stderr
        or not sys.platform.startswith("linux")
    )
    r = subprocess.run(
        [sys.executable, "-m", "fnn", "demo", "--no-tune"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0 and "CPU tuning" not in r.stderr


def test_malloc_settings_fit_mallopt():
    """mallopt takes C ints: a value past 2**31 - 1 would wrap around silently in ctypes."""
    for param, value in runtime.MALLOC_SETTINGS:
        assert -(2**31) <= param < 0 and 0 < value <= 2**31 - 1
    # the mmap threshold goes first, so a glibc that refuses it is left unchanged
    assert runtime.MALLOC_SETTINGS[0][0] == runtime.M_MMAP_THRESHOLD


def test_opt_out_values_and_cpu_only_platforms():
    jax.devices()
    for value in ("1", "yes", "true"):
        assert "FNN_NO_TUNE" in runtime.tune_cpu(environ={"FNN_NO_TUNE": value})["notes"][0]
    for value in ("0", "false", "off", ""):  # not an opt-out: gets as far as the backend check
        assert "already started" in runtime.tune_cpu(environ={"FNN_NO_TUNE": value})["notes"][0]
    assert runtime.accelerator_plugin({"JAX_PLATFORMS": "cpu"}) is None


IMPORT_CHILD = r"""
import json, os, sys, warnings
first = sys.argv[1]
if first == "backend":
    import jax
    jax.devices()  # the backend starts before fnn is imported
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import fnn
    import fnn  # a second import does nothing more
from fnn import runtime
print(json.dumps({"at_import": runtime.AT_IMPORT, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                  "started": runtime.backend_started(),
                  "warnings": [(w.category.__name__, str(w.message)) for w in caught]}))
"""


def import_child(first="", **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "FNN_NO_TUNE")}
    env.update(env_extra, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, "-c", IMPORT_CHILD, first],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_import_fnn_tunes_before_the_backend_starts():
    out = import_child()
    assert out["started"] is False  # importing fnn starts no backend: the settings still count
    assert out["warnings"] == []
    if runtime.jaxlib_knows_ynn_flag():
        assert out["at_import"]["xla_flags"] == f"{runtime.YNN_FLAG}={runtime.YNN_VALUE}"
        assert out["xla_flags"].strip() == out["at_import"]["xla_flags"]
    if sys.platform.startswith("linux") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith(
        "glibc"
    ):
        assert out["at_import"]["malloc"] is True


def test_import_fnn_opt_out_and_late_import_warning():
    out = import_child(FNN_NO_TUNE="1")
    assert out["xla_flags"] == "" and out["at_import"]["malloc"] is False
    assert out["warnings"] == [] and "opted out" in out["at_import"]["notes"][0]
    late = import_child("backend")
    assert late["xla_flags"] == "" and late["at_import"]["malloc"] is False
    assert [w[0] for w in late["warnings"]] == ["FnnTuningWarning"], late  # once
    assert "before `import fnn`" in late["warnings"][0][1]
    assert "FNN_NO_TUNE=1" in late["warnings"][0][1]
    # opted out and late: no warning
    assert import_child("backend", FNN_NO_TUNE="1")["warnings"] == []


def test_command_line_no_tune_is_seen_at_import():
    seen = runtime._opted_out_on_command_line
    assert seen(["-m", "train", "--no-tune"]) and seen(["/usr/local/bin/fnn", "demo", "--no-tune"])
    assert not seen(["-m", "train"]) and not seen(["my_script.py", "--no-tune"])
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "FNN_NO_TUNE")}
    env.update(FNN_DEBUG="1", JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, "-m", "fnn", "demo", "--no-tune"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--no-tune, JAX's defaults (at import: {'xla_flags': None, 'malloc': False" in r.stderr
