"""The benchmarks proper: a training step, a digits epoch and one gate, hand-written gradients
against jax.grad of the same forward (see fnn/bench/__init__.py for what each row holds)."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn.bench.cases import GRADS, batch_of, build, describe_spec, in_dtype, model_specs
from fnn.bench.timing import (
    ATTEMPTS,
    LOAD_TOLERANCE,
    interleaved,
    interleaved_times,
    matmul_flops,
    page_faults,
    peak_mb,
    profile,
    steady,
    summary,
    temp_mb,
    time_gate,
)
from fnn.nn.combinators import Layer


def _init(model: Layer, input_shape, seed: int):
    """(params, state) of `model`, initialized in one compiled program (not op by op)."""
    init = jax.jit(lambda key: model.init(key, input_shape)[:2])
    return init(jax.random.PRNGKey(seed))


def _copy(tree):
    """Fresh buffers with the same values (for arguments that a call donates)."""
    return jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)), tree)


def _chained(compiled, carry: list, *rest):
    """A zero-argument call of `compiled(*carry, *rest)` that donates the previous call's
    (params, state, opt_state) and keeps the new ones in `carry`, as in training; -> metrics."""

    def call():
        out = compiled(*carry, *rest)
        carry[:] = out[:-1]
        return out[-1]

    return call


def _step_arguments(spec: dict, dtype, seed: int):
    """The model of `spec` (computing in `dtype`), its optimizer (Adam), and a step's arguments
    (params, state, opt_state, (x, y), key)."""
    model = build(spec)
    if jnp.dtype(dtype) != jnp.float32:
        model = in_dtype(model, dtype)
    params, state = _init(model, spec["input"], seed)
    rng = np.random.default_rng(seed)
    x, y = map(jnp.asarray, batch_of(spec, rng))
    key = jax.random.PRNGKey(seed)
    opt = optax.adam(1e-3)
    return model, opt, (params, state, jax.jit(opt.init)(params), (x, y), key)


def _compile_steps(model: Layer, opt, args, compile_reps: int):
    """gradient -> its compiled step (the last compiled), compile seconds (each time), and its
    temporary MiB; the gradients compiled in alternating order."""
    from fnn.train.step import make_train_step

    compiled, compile_s, temp = {}, {g: [] for g in GRADS}, {}
    for i in range(compile_reps):  # a fresh step function each time, so nothing is cached
        for g in GRADS if i % 2 == 0 else GRADS[::-1]:
            step = make_train_step(model, opt, grad=g)  # jitted; params, state, opt donated
            t0 = time.perf_counter()
            compiled[g] = step.lower(*args).compile()
            compile_s[g].append(time.perf_counter() - t0)
            temp[g] = temp_mb(compiled[g])
    return compiled, compile_s, temp


def _time_fnn(chained, reference, reps: int, load_tolerance: float, attempts: int):
    """((gradient -> its step times, interleaved; the custom step's and the reference matmul's
    medians interleaved, or None without a reference), the loads) from fnn.bench.timing.steady."""

    def fnn_side():
        times = interleaved_times({g: chained(g) for g in GRADS}, reps)
        if reference is None:
            return times, None
        # on its own: a big matmul between the steps would evict caches
        return times, interleaved(
            {"step": chained("custom"), "gemm": reference[0]}, max(3, reps // 2)
        )

    return steady(fnn_side, tolerance=load_tolerance, attempts=attempts)


def _eager_medians(model: Layer, opt, args, eager_reps: int) -> dict:
    """gradient -> the median seconds of its step run eagerly (op by op); {} for no reps."""
    from fnn.train.step import make_train_step

    eager = {g: make_train_step(model, opt, grad=g, jit=False) for g in GRADS}
    return (
        interleaved({g: (lambda f=f: f(*args)) for g, f in eager.items()}, eager_reps, warmup=1)
        if eager_reps
        else {}
    )


def _step_flops(model: Layer, opt, args) -> int:
    """The matmul FLOPs of one training step (its program with the builtin gradient)."""
    from fnn.train.step import make_train_step

    return matmul_flops(
        jax.make_jaxpr(make_train_step(model, opt, grad="builtin", jit=False))(*args)
    )


def _chainer(compiled: dict, args):
    """`chained(g)`: the compiled step of gradient g as a zero-argument call (_chained), each
    gradient carrying its own copy of the step's (params, state, opt_state)."""
    carry = {g: list(_copy(args[:3])) for g in GRADS}

    def chained(g):
        return _chained(compiled[g], carry[g], *args[3:])  # (x, y), key

    return chained


def _description_columns(case: str, spec: dict, dtype, flops) -> dict:
    """The columns of a step row that say what it measures: case, model, batch, dtype, GFLOP."""
    return {
        "kind": "step",
        "case": case,
        "desc": describe_spec(spec),
        "batch": spec["batch"],
        "dtype": jnp.dtype(dtype).name,
        "gflop": flops / 1e9,
    }


def _profiles(chained, compiled: dict, top: int) -> dict:
    """gradient -> the `top` XLA operations by time of its compiled step (timing.profile)."""
    return {g: profile(chained(g), compiled[g].as_text(), top=top) for g in GRADS}


def _gradient_columns(times, compile_s, eager_med, temp, faults, flops) -> dict:
    """The <gradient>_ columns of a step row, then custom / builtin step and compile time."""
    row = {}
    for g in GRADS:
        stats = summary([t * 1e3 for t in times[g]])
        row[f"{g}_ms"] = stats.pop("median")
        row[f"{g}_spread"] = stats
        row[f"{g}_compile_s"] = statistics.median(compile_s[g])
        row[f"{g}_eager_ms"] = eager_med[g] * 1e3 if g in eager_med else None
        row[f"{g}_gflops"] = flops / row[f"{g}_ms"] / 1e6
        row[f"{g}_temp_mb"] = temp[g]
        row[f"{g}_faults"] = faults[g]
    row["ratio"] = row["custom_ms"] / row["builtin_ms"]
    row["compile_ratio"] = row["custom_compile_s"] / row["builtin_compile_s"]
    return row


def _matmul_columns(reference, share, flops) -> dict:
    """The reference matmul's GFLOP/s and the custom step's share of it (None without one)."""
    gemm_gflops = reference[1] / share["gemm"] / 1e9 if reference is not None else None
    return {
        "gemm_gflops": gemm_gflops,
        "matmul_share": (
            flops / share["step"] / 1e9 / gemm_gflops if reference is not None else None
        ),
    }


def bench_step(
    case: str,
    spec: dict,
    *,
    reps: int,
    eager_reps: int,
    compile_reps: int,
    dtype,
    reference=None,
    torch: bool,
    torch_path: str | None = None,
    load_tolerance: float = LOAD_TOLERANCE,
    attempts: int = ATTEMPTS,
    seed: int = 0,
    profile_top: int = 0,
) -> dict:
    """Custom vs builtin jitted training step of one model (see the module docstring), then
    PyTorch's step in a process of its own (`torch`; `torch_path`: a folder holding torch, put
    on that process's path only).

    `reference` (a gemm(), or None) is timed interleaved with the custom step, so that the
    share of its FLOP/s that the step reaches compares the two under the same conditions. Each
    side's timing is repeated while the 1-min load average moves by more than `load_tolerance`
    across it (`attempts` at most, fnn.bench.timing.steady); the row keeps the loads.
    """
    model, opt, args = _step_arguments(spec, dtype, seed)
    compiled, compile_s, temp = _compile_steps(model, opt, args, compile_reps)
    flops = _step_flops(model, opt, args)
    chained = _chainer(compiled, args)
    (times, share), fnn_load = _time_fnn(chained, reference, reps, load_tolerance, attempts)
    faults = {g: page_faults(chained(g), 3 if reps < 10 else 10) for g in GRADS}
    eager_med = _eager_medians(model, opt, args, eager_reps)

    row = {
        **_description_columns(case, spec, dtype, flops),
        "load_fnn": fnn_load,
        **_gradient_columns(times, compile_s, eager_med, temp, faults, flops),
        **_matmul_columns(reference, share, flops),
    }
    row["peak_mb"] = peak_mb()
    if profile_top:
        row["profile"] = _profiles(chained, compiled, profile_top)
    # PyTorch last, in its own process: nothing of this one (XLA's threads, its buffers) runs
    # beside it
    row.update(
        torch_columns(
            spec,
            dtype,
            seed,
            reps,
            flops,
            row["gemm_gflops"],
            row["custom_ms"],
            torch=torch,
            torch_path=torch_path,
            load_tolerance=load_tolerance,
            attempts=attempts,
        )
    )
    return row


def torch_columns(
    spec,
    dtype,
    seed,
    reps,
    flops,
    gemm_gflops,
    custom_ms,
    *,
    torch: bool,
    torch_path,
    load_tolerance,
    attempts,
) -> dict:
    """The PyTorch columns of a step row: its step timed in a process of its own
    (fnn.bench.torch_ref), repeated while the load moves (`steady`); None where torch is
    skipped or cannot run (then `torch_error` says why)."""
    out = {
        "torch_ms": None,
        "torch_spread": None,
        "torch_ratio": None,
        "torch_speedup": None,
        "torch_matmul_share": None,
        "torch": None,
        "load_torch": None,
        "torch_error": None,
    }
    if not torch:
        return out
    request = {
        "spec": spec,
        "dtype": jnp.dtype(dtype).name,
        "reps": reps,
        "seed": seed,
        "device": torch_device(),
    }
    answer, load = steady(
        lambda: run_reference(request, torch_path=torch_path),
        tolerance=load_tolerance,
        attempts=attempts,
    )
    if "error" in answer:
        out["torch_error"] = answer["error"]
        return out
    stats = summary(answer.pop("times_ms"))
    out.update(torch_ms=stats.pop("median"), torch_spread=stats, torch=answer, load_torch=load)
    out["torch_ratio"] = custom_ms / out["torch_ms"]
    out["torch_speedup"] = out["torch_ms"] / custom_ms
    if gemm_gflops:
        out["torch_matmul_share"] = flops / out["torch_ms"] / 1e6 / gemm_gflops
    return out


def torch_device() -> str:
    """The device PyTorch's step runs on: "cuda" where JAX runs on an NVIDIA GPU (so the two
    compare on the same card), else "cpu" (a ROCm or TPU JAX is compared with PyTorch's CPU
    step, and the row says so through the answer's "device")."""
    if jax.default_backend() != "gpu":
        return "cpu"
    from jax.extend import backend

    version = backend.get_backend().platform_version.lower()
    return "cpu" if "rocm" in version else "cuda"


def run_reference(request: dict, *, torch_path: str | None = None, timeout_s: float = 3600) -> dict:
    """fnn/bench/torch_ref.py's answer to `request`, from a fresh interpreter: this Python,
    its own sys.path (not the current directory) plus `torch_path` and $PYTHONPATH's folders
    first. -> the answer, or {"error"} when the process fails."""
    import json
    import os
    import subprocess
    import sys

    from fnn.bench import torch_ref

    extra = [p for p in [torch_path, *os.environ.get("PYTHONPATH", "").split(os.pathsep)] if p]
    code = (
        "import runpy, sys; sys.path = [p for p in sys.path if p]; "
        f"sys.path[:0] = {extra!r}; runpy.run_path({torch_ref.__file__!r}, "
        "run_name='__main__')"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps(request)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"the PyTorch process took more than {timeout_s:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"the PyTorch process failed (exit {done.returncode}): {tail}"}
    return json.loads(lines[-1])


def bench_epoch(*, reps: int, limit: int | None, seed: int = 0) -> dict:
    """The digits MLP's whole epoch as one compiled scan, custom vs builtin."""
    from fnn.train.data import load_dataset
    from fnn.train.epoch import make_train_epoch, steps_per_epoch
    from fnn.train.step import make_train_step

    spec = model_specs()["digits"]
    data = load_dataset("digits", limit=limit)
    model = build(spec)
    params, state = _init(model, spec["input"], seed)
    opt = optax.adam(1e-3)
    opt_state = jax.jit(opt.init)(params)
    x, y, key = jnp.asarray(data.x_train), jnp.asarray(data.y_train), jax.random.PRNGKey(1)
    compiled, compile_s, carry = {}, {}, {}
    for g in GRADS:
        epoch = make_train_epoch(
            make_train_step(model, opt, grad=g, jit=False), batch_size=spec["batch"]
        )
        t0 = time.perf_counter()
        compiled[g] = epoch.lower(params, state, opt_state, x, y, key).compile()
        compile_s[g] = time.perf_counter() - t0
        carry[g] = list(_copy((params, state, opt_state)))

    def chained(g):
        return _chained(compiled[g], carry[g], x, y, key)

    med = interleaved({g: chained(g) for g in GRADS}, reps, warmup=1)
    steps = steps_per_epoch(x.shape[0], spec["batch"])
    row = {
        "kind": "epoch",
        "case": "digits epoch",
        "desc": f"{describe_spec(spec)}, {x.shape[0]} examples, {steps} steps, lax.scan",
        "steps": steps,
        "ratio": med["custom"] / med["builtin"],
    }
    for g in GRADS:
        row[f"{g}_ms"] = med[g] * 1e3
        row[f"{g}_us_per_step"] = med[g] / steps * 1e6
        row[f"{g}_compile_s"] = compile_s[g]
    return row


def bench_gate(
    name: str, label: str, make, *, reps: int, dtype, seed: int = 0, budget_s: float = 1.0
) -> dict:
    """One gate (or function of fnn.ops.aliases, differentiated by its primitives' rules) at a
    realistic size (`make(rng, dtype) -> (args, kwargs)`): time_gate's row."""
    from fnn.ops import aliases, registry

    rng = np.random.default_rng(seed)
    args, kwargs = make(rng, dtype)
    gate = registry.named[name] if name in registry.named else getattr(aliases, name)
    t = time_gate(gate, args, kwargs, rng=rng, reps=reps, budget_s=budget_s)
    return {
        "kind": "gate",
        "case": name,
        "desc": label,
        "dtype": jnp.dtype(dtype).name,
        "custom_ms": t["custom"] * 1e3,
        "builtin_ms": t["builtin"] * 1e3,
        "ratio": t["custom"] / t["builtin"],
        "reps": t["reps"],
    }
