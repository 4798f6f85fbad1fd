"""Lowering for accelerators, checked on the CPU machines (fnn.check.lowering): the jitted
training step and the compiled epoch loop (make_epoch_runner, what fit runs) of every model in
fnn.nn.MODELS, with both gradient modes, float32 and bfloat16 compute, on one device and data
parallel over 8, and the jitted fnn.grad of every gate's test cases (fnn.registry and the
primitive rules of fnn.ops.primitives), are exported with jax.export for CUDA, ROCm and TPU in
one call each. A row fails on a lowering error (a platform_dependent without a default, a host
callback, ...) or on a CPU-only or unknown custom call in the module.

Data parallelism needs the 8 devices when it is traced, so everything is exported in one
subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 (set before JAX starts); each
row is then a test of its own. Lowering only: nothing is compiled. Sizes are tiny: what matters
is which operations the program holds, not how big they are.

More step variants are rows of VARIANTS: keyword options of make_train_step and
make_epoch_runner (an option goes to make_epoch_runner when it takes it, as fit passes
`devices`, and to make_train_step otherwise; the bare step gets them all).
"""

import dataclasses
import functools
import inspect
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fnn.check.lowering import (
    ACCELERATORS,
    check_lowering,
    check_lowerings,
    custom_call_targets,
    target_problems,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 8
# name -> keyword options of make_train_step / make_epoch_runner (see the module docstring)
# (sharded: the tiny models' leaves are far below MIN_SHARD_SIZE, so shard from 16 elements)
VARIANTS = {
    "1 device": {},
    f"{DEVICES} devices": dict(devices=DEVICES),
    f"{DEVICES} devices sharded": dict(devices=DEVICES, shard="params", min_shard_size=16),
    "1 device remat": dict(remat=True),
}
GRADS = ("custom", "builtin")
DTYPES = ("float32", "bfloat16")
PROGRAMS = ("step", "epoch")
BATCH = 8  # divisible by DEVICES
# model -> (options of fnn.nn.build_model, one example's shape, vocabulary: token ids in, or
# None: float inputs and 10 classes); the structure of each model, at a tiny size
MODELS = {
    "mlp": (dict(hidden=(8,), dropout=0.1), (8, 8, 1), None),
    "cnn": (dict(channels=(4,), dense=(8,), batch_norm=True), (8, 8, 3), None),
    "resnet": (dict(widths=(4, 8)), (8, 8, 3), None),
    "rnn": (dict(hidden=(8,), embed=4), (5,), 11),
    "lstm": (dict(hidden=(8,), embed=4), (5,), 11),
    "gru": (dict(hidden=(8,), embed=4), (5,), 11),
    "transformer": (dict(width=8, depth=1, heads=2), (6,), 11),
}


def step_rows():
    return [
        f"{program} {model} {grad} {dtype} {variant}"
        for program in PROGRAMS
        for model in MODELS
        for grad in GRADS
        for dtype in DTYPES
        for variant in VARIANTS
    ]


def gate_tables():
    """(table, name) -> gate: fnn.registry and the primitive rules, each gate once."""
    import fnn

    return {
        ("registry" if g.primitive is None else "primitive", n): g for n, g in fnn.registry.items()
    }


# ---- the child: every export, in one process with 8 host devices ---------------------------
def _spec(tree, sharding=None):
    """ShapeDtypeStructs of a tree of arrays, placed with `sharding`: one for every leaf, or a
    function of the leaf (dp.param_sharding), or None."""
    place = sharding if callable(sharding) else (lambda a: sharding)
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a), sharding=place(a)), tree
    )


@functools.lru_cache(maxsize=None)
def model_setup(model_name):
    """(model, optimizer, (params, state, opt_state, key), metrics, x, y) of a MODELS row, the
    last four as ShapeDtypeStructs (metrics: one step's); shared by the rows of the model."""
    from fnn import nn, train

    options, shape, vocab = MODELS[model_name]
    model = nn.build_model(model_name, vocab or 10, **options)
    opt = train.make_optimizer("adam", 1e-3)
    train_state = jax.eval_shape(
        lambda: (lambda ts: (ts.params, ts.state, ts.opt_state, ts.key))(
            train.init_train_state(model, opt, shape)
        )
    )
    x = jax.ShapeDtypeStruct((BATCH, *shape), jnp.int32 if vocab else jnp.float32)
    y = jax.ShapeDtypeStruct((BATCH, *shape) if vocab else (BATCH,), jnp.int32)
    step = train.make_train_step(model, opt, grad="builtin", jit=False)
    metrics = jax.eval_shape(step, *train_state[:3], (x, y), train_state[3])[3]
    return model, opt, train_state, metrics, x, y


def build_program(program, model_name, grad, dtype, **variant):
    """(jitted function, its arguments as ShapeDtypeStructs) for one row: the train step
    (make_train_step(jit=False), jitted) or the epoch runner over 2 steps, as fit builds it."""
    from fnn import train
    from fnn.bench.cases import in_dtype
    from fnn.train.epoch import make_epoch_runner
    from fnn.train.parallel import data_parallel

    model, opt, (params, state, opt_state, key), metrics, x, y = model_setup(model_name)
    if dtype != "float32":
        model = in_dtype(model, dtype)  # float32 parameters, `dtype` compute
    dp = data_parallel(
        variant.get("devices"),
        variant.pop("shard", None),
        **(
            {"min_shard_size": variant.pop("min_shard_size")} if "min_shard_size" in variant else {}
        ),
    )
    everywhere, split = (dp.replicated, dp.batch) if dp is not None else (None, None)
    if dp is not None:
        variant["devices"] = dp  # the mesh, and how parameters are placed on it
    carry = _spec((params, state, opt_state), everywhere)
    if dp is not None and dp.shard_params:  # as fit places them (dp.place_train_state)
        carry = (_spec(params, dp.param_sharding), carry[1], _spec(opt_state, dp.param_sharding))
    key = _spec(key, everywhere)
    if program == "step":
        step = train.make_train_step(model, opt, grad=grad, jit=False, **variant)
        return jax.jit(step), (*carry, (_spec(x, split), _spec(y, split)), key)
    runner_takes = inspect.signature(make_epoch_runner).parameters
    to_runner = {k: v for k, v in variant.items() if k in runner_takes}
    step = train.make_train_step(
        model, opt, grad=grad, jit=False, **{k: v for k, v in variant.items() if k not in to_runner}
    )
    runner = make_epoch_runner(step, **to_runner)
    n_steps = 2
    buffers = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct((n_steps, *m.shape), m.dtype), metrics
    )
    order = jax.ShapeDtypeStruct((n_steps, BATCH), jnp.int32)
    keys = jax.ShapeDtypeStruct((n_steps, *key.shape), key.dtype)
    i = jax.ShapeDtypeStruct((), jnp.int32)
    return runner, (*carry, *_spec((buffers, x, y, order, keys, i, i), everywhere))


def gate_program(gate, reference=False):
    """(jitted function, arguments) for a gate: fnn.grad (jax.grad with `reference`) of the
    sum of its float outputs (their real parts), at every float32 test case, in one function
    (the forward alone where nothing is differentiable)."""
    import fnn
    from fnn.check.gates import cast_case, gate_functions

    cases = gate.cases(np.random.default_rng(0), "float32")
    fns, inputs = [], []
    for case in cases:
        args = cast_case(case, "float32")
        diff, _, recorded = gate_functions(gate, args, case.kwargs, fixed=case.fixed)
        d = [args[i] for i in diff]
        out = jax.eval_shape(recorded, *d)
        floats = [o for o in jax.tree_util.tree_leaves(out) if jnp.issubdtype(o.dtype, jnp.inexact)]
        if d and floats:

            def total(*d, recorded=recorded):
                return sum(
                    jnp.sum(jnp.real(o).astype(jnp.float32))
                    for o in jax.tree_util.tree_leaves(recorded(*d))
                    if jnp.issubdtype(o.dtype, jnp.inexact)
                )

            fns.append((jax.grad if reference else fnn.grad)(total, argnums=tuple(range(len(d)))))
        else:
            fns.append(recorded)
        inputs.append(tuple(d))

    def all_cases(inputs):
        return [f(*d) for f, d in zip(fns, inputs)]

    return jax.jit(all_cases), (_spec(inputs),)


def child_main():
    """Export every row (one program per variant, one for the gates); print one JSON line per
    row: its name and report (a row whose program cannot even be built reports why)."""
    assert jax.device_count() == DEVICES, jax.devices()
    t0 = time.perf_counter()
    groups, broken, makers = {**{variant: {} for variant in VARIANTS}, "gates": {}}, {}, []
    for row in step_rows():
        program, model, grad, dtype, variant = row.split(" ", 4)
        makers.append(
            (
                row,
                variant,
                functools.partial(build_program, program, model, grad, dtype, **VARIANTS[variant]),
            )
        )
    makers += [
        (f"gate {table} {name}", "gates", functools.partial(gate_program, gate))
        for (table, name), gate in gate_tables().items()
    ]
    for row, group, make in makers:
        try:
            groups[group][row] = make()
        except Exception as e:  # building (tracing the shapes) is part of what is checked
            broken[row] = {
                "platforms": list(ACCELERATORS),
                "targets": [],
                "devices": None,
                "problems": [f"cannot build: {type(e).__name__}: {e}"],
            }
    print(f"built {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    for row, report in broken.items():
        print("ROW " + json.dumps({"row": row, **report}), flush=True)
    gates = {f"gate {table} {name}": gate for (table, name), gate in gate_tables().items()}
    for group, programs in groups.items():
        t0 = time.perf_counter()
        for row, report in check_lowerings(programs).items():
            out = {"row": row, **dataclasses.asdict(report)}
            if row in gates and not report.ok:
                out["by_platform"] = jax_limits(gates[row], *programs[row])
            print("ROW " + json.dumps(out), flush=True)
        print(f"{group}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def jax_limits(gate, fn, args):
    """platform -> [fnn's program lowers there, jax.grad's own program of the same cases
    lowers there], for a gate whose program does not lower for every accelerator: a platform
    where JAX's own gradient (its forward, that is) does not lower either is JAX's limit, not
    fnn's (pivoted QR has no TPU lowering; tridiagonal_solve's cuSPARSE call has no export
    compatibility guarantee)."""
    ref_fn, ref_args = gate_program(gate, reference=True)
    return {
        p: [
            check_lowering(fn, *args, platforms=[p]).ok,
            check_lowering(ref_fn, *ref_args, platforms=[p]).ok,
        ]
        for p in ACCELERATORS
    }


def child_reports():
    """row -> report (a dict of LoweringCheck's fields), from child_main in a subprocess with
    8 host CPU devices (XLA_FLAGS set before JAX starts)."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}",
    )
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(
        [sys.executable, os.path.abspath(__file__)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line[4:]) for line in r.stdout.splitlines() if line.startswith("ROW ")]
    return {row.pop("row"): row for row in rows}


@pytest.fixture(scope="module")
def reports():
    return child_reports()


def all_rows():
    return step_rows() + [f"gate {table} {name}" for table, name in gate_tables()]


# ---- the rows -------------------------------------------------------------------------------
def test_rows_cover_every_model_and_gate(reports):
    from fnn import nn

    assert set(MODELS) == set(nn.MODELS), "a model of fnn.nn.MODELS has no row here"
    assert set(nn.SEQUENCE_MODELS) <= set(MODELS)
    assert sorted(reports) == sorted(all_rows())
    assert len(step_rows()) == len(PROGRAMS) * len(MODELS) * len(GRADS) * len(DTYPES) * len(
        VARIANTS
    )


@pytest.mark.parametrize("row", all_rows())
def test_lowers_for_accelerators(reports, row):
    """The row's program lowers for CUDA, ROCm and TPU, and calls nothing CPU-only."""
    report = reports[row]
    assert report["platforms"] == list(ACCELERATORS)
    if report["problems"] and row.startswith("gate "):
        fnn_only = [p for p, (ours, jaxs) in report["by_platform"].items() if jaxs and not ours]
        assert not fnn_only, (row, fnn_only, report["problems"], report.get("error"))
        if any(not jaxs for _, jaxs in report["by_platform"].values()):
            pytest.xfail(
                f"JAX's own gradient does not lower there either: "
                f"{report['by_platform']} ({report['problems']})"
            )
    assert not report["problems"], (row, report["problems"], report.get("error"))
    variant = row.split(" ", 4)[4] if not row.startswith("gate ") else None
    devices = VARIANTS[variant].get("devices") if variant else None
    assert report["devices"] == (devices or 1), (row, report["devices"])  # really split


# ---- the checker catches what it is there for ------------------------------------------------
X = jax.ShapeDtypeStruct((4, 4), jnp.float32)


def test_a_cpu_only_custom_call_is_caught():
    """jnp.linalg.eigh lowers to LAPACK on CPU: the checker flags it (and takes it on a GPU,
    where it is cuSOLVER's)."""
    report = check_lowering(jnp.linalg.eigh, X, platforms=["cpu"])
    assert any(t.startswith("lapack_") for t in report.targets), report.targets
    assert not report.ok and "CPU-only" in report.problems[0], report.problems
    assert check_lowering(jnp.linalg.eigh, X, platforms=["cuda"]).ok
    assert target_problems(["ducc_fft"]) and target_problems(["xla_ffi_python_cpu_callback"])
    assert "not known" in target_problems(["my_kernel"])[0]
    assert target_problems(["cusolver_syevd_ffi"], ["rocm"])  # cuda's own, not rocm's
    assert not target_problems(["cusolver_syevd_ffi", "hipsolver_syevd_ffi", "Sharding"])


def test_platform_dependent_without_default_and_host_callbacks_are_caught():
    cpu_only = check_lowering(lambda x: lax.platform_dependent(x, cpu=jnp.sin), X)
    assert not cpu_only.ok and cpu_only.error and "cuda" in cpu_only.error, cpu_only
    with_default = check_lowering(
        lambda x: lax.platform_dependent(x, cpu=jnp.sin, default=jnp.cos), X
    )
    assert with_default.ok, with_default.problems

    def noisy(x):  # a progress callback inside a loop, as scan_steps' progress= makes one
        return lax.fori_loop(0, 2, lambda i, c: (jax.debug.callback(print, i), c)[1], x)

    report = check_lowering(noisy, X)
    assert not report.ok and "host callback 'debug_callback'" in report.problems[0], report


def test_custom_call_targets_reads_both_forms():
    text = (
        "%0 = stablehlo.custom_call @lapack_ssyevd_ffi(%a) : ...\n"
        '%1 = "stablehlo.custom_call"(%b) {call_target_name = "Sharding"} : ...\n'
        "%2 = stablehlo.custom_call @Sharding(%c) : ..."
    )
    assert custom_call_targets(text) == ["Sharding", "lapack_ssyevd_ffi"]


def test_one_program_for_many_and_the_culprit_named():
    def fine(x):
        return jnp.tanh(x) @ x

    def cpu_only(x):
        return lax.platform_dependent(x, cpu=jnp.sin)

    both = check_lowerings({"fine": (fine, (X,)), "also fine": (jnp.exp, (X,))})
    assert both["fine"].ok and both["fine"] is both["also fine"]  # one export
    one_bad = check_lowerings({"fine": (fine, (X,)), "bad": (cpu_only, (X,))})
    assert one_bad["fine"].ok and not one_bad["bad"].ok


if __name__ == "__main__":
    child_main()
