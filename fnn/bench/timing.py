"""How things are timed and counted: interleaved medians, one gate's forward + VJP (the gate
timer of the bench and of `python -m fnn gradcheck`), FLOPs of a jaxpr, scratch memory, page
faults, XLA profiles, the reference matmul, the machine."""

from __future__ import annotations

import math
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from fnn.check.gates import gate_functions, random_cotangent
from fnn.transforms import vjp as fnn_vjp


def _block(tree):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready(), tree)


def interleaved(fns: dict, reps: int, warmup: int = 3) -> dict:
    """Median seconds per call of each zero-argument function, called alternately (in forward
    then reverse order, so that neither always runs first)."""
    return {k: statistics.median(v) for k, v in interleaved_times(fns, reps, warmup).items()}


def interleaved_times(fns: dict, reps: int, warmup: int = 3) -> dict:
    """The seconds of each of `reps` calls of each zero-argument function, called alternately
    as `interleaved` calls them: {name: [seconds, ...]}."""
    for _ in range(warmup):
        for f in fns.values():
            _block(f())
    times = {k: [] for k in fns}
    order = list(fns)
    for _ in range(reps):
        for k in order:
            t0 = time.perf_counter()
            _block(fns[k]())
            times[k].append(time.perf_counter() - t0)
        order.reverse()
    return times


def summary(times) -> dict:
    """{'median', 'q1', 'q3', 'min', 'max', 'n'} of a list of seconds (quartiles by
    statistics.quantiles, inclusive; all equal to the one value for a single call)."""
    times = sorted(times)
    q1, _, q3 = (
        statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else (times[0],) * 3
    )
    return {
        "median": statistics.median(times),
        "q1": q1,
        "q3": q3,
        "min": times[0],
        "max": times[-1],
        "n": len(times),
    }


def spread(fns: dict, reps: int, warmup: int = 3) -> dict:
    """{name: summary} of each function's calls, timed by `interleaved_times`."""
    return {k: summary(v) for k, v in interleaved_times(fns, reps, warmup).items()}


LOAD_TOLERANCE = 0.5  # how far the 1-min load average may move across one side's timing
ATTEMPTS = 3  # how often a side is timed at most when it moves further


def steady(measure, *, tolerance: float = LOAD_TOLERANCE, attempts: int = ATTEMPTS):
    """Call `measure()` until the 1-minute load average moves by at most `tolerance` across one
    call, `attempts` calls at most. -> (the result of the call across which it moved least,
    {"load": [[before, after] per call], "chosen": that call's index, "steady": whether it
    moved by at most `tolerance` there}). Where the load average is unknown, one call.

    The timed process adds to the load itself (a bench keeping two cores busy for 10 s raises
    the 1-min average by about 2 (1 - exp(-10/60)) = 0.3), so a long side on a busy machine may
    stay unsteady: the row says so rather than hiding it.
    """
    tries = []
    for _ in range(max(1, attempts)):
        before = load_average()
        result = measure()
        after = load_average()
        tries.append((result, [before, after]))
        if _moved([before, after]) <= tolerance:
            break
    chosen = min(range(len(tries)), key=lambda i: _moved(tries[i][1]))
    return tries[chosen][0], {
        "load": [load for _, load in tries],
        "chosen": chosen,
        "steady": _moved(tries[chosen][1]) <= tolerance,
    }


def _moved(load) -> float:
    return 0.0 if None in load else abs(load[1] - load[0])


def time_gate(
    gate,
    args,
    kwargs,
    *,
    rng: np.random.Generator,
    reps: int,
    budget_s: float = 0.0,
    fixed: tuple = (),
) -> dict:
    """Median seconds of one gate's forward + VJP under jit at (args, kwargs), for gradients of
    every float input: fnn's recorded gate (under jit only its hand-written VJP remains) vs
    jax.vjp of the same forward, called interleaved, at a random cotangent drawn from `rng`.

    reps calls each at least; more (up to 50 x reps) to fill `budget_s` seconds, so a gate
    that takes microseconds is timed over many calls. fixed: float inputs held fixed (a
    Case's). -> {"custom", "builtin", "reps"}.
    """
    diff, forward, recorded = gate_functions(gate, args, kwargs, fixed=fixed)

    def custom(g, *dargs):
        out, pullback = fnn_vjp(recorded, *dargs)
        return out, pullback(g)

    def builtin(g, *dargs):
        out, pullback = jax.vjp(forward, *dargs)
        return out, pullback(g)

    dargs = [args[i] for i in diff]
    g = random_cotangent(jax.eval_shape(forward, *dargs), rng)
    fns = {
        k: jax.jit(f).lower(g, *dargs).compile()
        for k, f in (("custom", custom), ("builtin", builtin))
    }
    calls = {k: (lambda f=f: f(g, *dargs)) for k, f in fns.items()}
    once = sum(interleaved(calls, 1, warmup=1).values())
    reps = min(max(reps, int(budget_s / once)), 50 * reps)
    return {**interleaved(calls, reps), "reps": reps}


def matmul_flops(jaxpr) -> int:
    """FLOPs of the dot_general and conv_general_dilated equations of a (closed) jaxpr,
    2 x output size x contraction size, through nested jaxprs (scan bodies times length)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        name, out = eqn.primitive.name, eqn.outvars[0].aval.shape
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(out) * math.prod(lhs[i] for i in contract)
        elif name == "conv_general_dilated":
            rhs, spec = eqn.invars[1].aval.shape, eqn.params["dimension_numbers"].rhs_spec
            total += 2 * math.prod(out) * math.prod(rhs[i] for i in spec[1:])
        times = eqn.params.get("length", 1) if name == "scan" else 1
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    total += times * matmul_flops(sub)
    return total


def temp_mb(compiled):
    try:
        return compiled.memory_analysis().temp_size_in_bytes / 2**20
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def page_faults(f, calls: int):
    """Minor page faults of this process per call of `f` (None where not reported): on CPU,
    XLA allocates a step's scratch memory afresh at every call, and the kernel maps each page
    of it on first touch."""
    try:
        import resource
    except ImportError:
        return None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        _block(f())
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def profile(f, hlo_text: str, calls: int = 5, top: int = 12) -> dict | None:
    """Where the time of `f` (a compiled step) goes, from a JAX profiler trace of `calls` calls:
    {'ops': the `top` XLA operations by time per call, [(name, ms, output shape)];
    'total_ms': all its XLA operations' time per call; 'wall_ms': the median call's wall time}.
    Operation times are summed over the threads that ran them (on CPU one operation may run on
    several at once), so totals can exceed the wall time. An operation that XLA hands to Eigen's
    thread pool (its CPU convolutions, and products it does not give YNNPACK) is recorded for
    less than it runs (a (128, 32, 32, 16) 3x3 convolution: 1 ms of its 15; x.T @ y at 1024:
    7 of 15), so a step's total can also fall short of the wall time; the two side by side
    show it. None if tracing fails."""
    import collections
    import glob
    import re
    import tempfile

    walls = []
    try:
        with tempfile.TemporaryDirectory() as d:
            jax.profiler.start_trace(d)
            try:
                for _ in range(calls):
                    t0 = time.perf_counter()
                    _block(f())
                    walls.append(time.perf_counter() - t0)
            finally:
                jax.profiler.stop_trace()
            data = jax.profiler.ProfileData.from_file(
                glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)[0]
            )
    except Exception:  # noqa: BLE001 - profiling is a diagnostic, never a failure
        return None
    total = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if line.name == "python":
                continue
            for ev in line.events:
                if not ev.name.startswith(_NOT_XLA_OPERATIONS):
                    total[ev.name] += ev.duration_ns
    ops = []
    for name, ns in total.most_common(top):
        m = re.search(r"%" + re.escape(name) + r" = (\S+)", hlo_text)
        ops.append((name, ns / calls / 1e6, m.group(1) if m else ""))
    return {
        "ops": ops,
        "total_ms": sum(total.values()) / calls / 1e6,
        "wall_ms": statistics.median(walls) * 1e3,
    }


# trace events that are not an XLA operation of the step: the runtime's executors and thread
# pools, and Python functions ('$file.py:line name', from the profiler's Python tracer)
_NOT_XLA_OPERATIONS = ("ThunkExecutor", "end:", "Threadpool", "Slinky", "$")


def peak_mb():
    """The device's peak memory so far in this process (MiB), or None where not reported."""
    stats = jax.devices()[0].memory_stats()
    return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None


def gemm(n: int, dtype=jnp.float32):
    """(zero-argument compiled (n, n) @ (n, n) matmul, its FLOPs): the reference throughput."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    f = jax.jit(jnp.matmul).lower(a, b).compile()
    return (lambda: f(a, b)), 2 * n**3


def bench_matmul(n: int, reps: int, dtype=jnp.float32) -> dict:
    f, flops = gemm(n, dtype)
    t = interleaved({"mm": f}, reps, warmup=2)["mm"]
    return {
        "kind": "gemm",
        "case": f"matmul {n}x{n}x{n} {jnp.dtype(dtype).name}",
        "dtype": jnp.dtype(dtype).name,
        "ms": t * 1e3,
        "gflops": flops / t / 1e9,
    }


def machine() -> str:
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(
                    line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
                )
        except (OSError, StopIteration):
            pass
        kind = f"CPU {cpu}, {os.cpu_count()} cores"
    else:
        kind = f"{dev.platform.upper()} {dev.device_kind}"
    return f"{kind} ({jax.default_backend()} backend), jax {jax.__version__}"


def load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
