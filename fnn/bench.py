"""Benchmarks: fnn's hand-written gradients against jax.grad, under jit, on JAX's first device.

    python -m fnn bench                          # every case, tables on stdout
    python -m fnn bench --only cnn,gates --reps 100 --json out.json --markdown out.md
    python -m fnn bench --quick                  # tiny sizes: a smoke run of every case

Protocol: each function is compiled first (trace + compile, timed), warmed up, then the
functions compared are called alternately in one process (drift in the machine's speed hits
them alike) and the median of --reps calls is reported. Benchmarks are never timed tests.

Rows (the JSON holds {"device", "dtype", "reps", "quick", "load", "rows", "targets"}), by kind:
    gemm    an (n, n) @ (n, n) matmul: the device's reference FLOP/s
    step    one training step of a model (loss, gradient, optax Adam update: the step that
            `python -m fnn train` runs), grad="custom" (hand-written VJPs) vs grad="builtin"
            (jax.grad of the same forward): jitted time, compile time, eager (un-jitted) time,
            GFLOP/s of its matmuls and convolutions and their share of the matmul's, XLA's
            scratch memory, the device's peak memory where the backend reports it, and
            PyTorch's eager step on the same architecture when torch is installed
    epoch   a whole epoch of the digits MLP as one compiled lax.scan (fnn.train.make_train_epoch)
    gate    one gate at a realistic size under jit: forward + hand-written VJP vs forward +
            jax.vjp of the same forward (gradients for every float input)

--dtype bfloat16 computes in bf16 with float32 parameters: the loss casts the parameters (with
the astype gate, so their gradients come back in float32) and the inputs to bf16, and the
scores back to float32 for the loss; the gate micro-benchmarks take bf16 inputs.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn import nn, ops
from fnn.nn.layer import Layer

STEP_CASES = ("mlp", "cnn", "resnet", "digits")
CASES = ("gemm", *STEP_CASES, "epoch", "gates")
GRADS = ("custom", "builtin")
# targets of issue 5: hand-written / built-in step time, compile time, against PyTorch, FLOP/s
TARGET_RATIO = {"mlp": 1.00, "digits": 1.00, "cnn": 0.75, "resnet": 0.75}
TARGET_COMPILE_RATIO = 1.3
TARGET_TORCH_SPEEDUP = {"mlp": 2.0, "cnn": 1.0}
TARGET_MATMUL_SHARE = {"mlp": 0.85}


# ---- what is measured --------------------------------------------------------------------------
def model_specs(quick: bool = False) -> dict:
    """case -> spec: kind ('mlp' | 'cnn' | 'resnet'), sizes, input shape (one example), batch."""
    from fnn.train.run import TrainConfig

    d = TrainConfig()  # the default training run: digits, its MLP, its batch size
    digits = {"kind": "mlp", "hidden": tuple(d.hidden), "input": (8, 8, 1), "batch": d.batch_size}
    if quick:
        return {"mlp": {"kind": "mlp", "hidden": (32, 32), "input": (64,), "batch": 8},
                "cnn": {"kind": "cnn", "channels": (4, 8), "input": (8, 8, 3), "batch": 4},
                "resnet": {"kind": "resnet", "widths": (4, 8, 8), "input": (8, 8, 3), "batch": 4},
                "digits": digits}
    return {"mlp": {"kind": "mlp", "hidden": (1024, 1024), "input": (784,), "batch": 256},
            "cnn": {"kind": "cnn", "channels": (32, 64), "input": (32, 32, 3), "batch": 128},
            "resnet": {"kind": "resnet", "widths": (16, 32, 64), "input": (32, 32, 3),
                       "batch": 128},
            "digits": digits}


def describe_spec(spec) -> str:
    shape = "x".join(map(str, spec["input"]))
    if spec["kind"] == "mlp":
        sizes = "-".join(map(str, (math.prod(spec["input"]), *spec["hidden"], 10)))
        return f"MLP {sizes}, {shape} in, batch {spec['batch']}"
    if spec["kind"] == "cnn":
        blocks = "-".join(f"conv3x3({c})-relu-pool2" for c in spec["channels"])
        return f"{blocks}-dense(10), {shape} in, batch {spec['batch']}"
    return (f"ResNet (stem + 1 residual block per stage, widths "
            f"{','.join(map(str, spec['widths']))}), {shape} in, batch {spec['batch']}")


def build(spec) -> Layer:
    if spec["kind"] == "mlp":
        return nn.mlp(spec["hidden"])
    if spec["kind"] == "cnn":
        return nn.cnn(spec["channels"], dense=())
    return nn.resnet(spec["widths"])


def in_dtype(model: Layer, dtype) -> Layer:
    """`model` computing in `dtype` with float32 parameters and float32 scores (mixed precision).

    The casts of the parameters and the scores are astype gates, so both fnn.grad and jax.grad
    carry gradients through them; the inputs are data (no gradient) and are cast directly.
    """
    def apply(params, state, x, *, key=None, train=False):
        low = jax.tree_util.tree_map(lambda p: ops.astype(p, dtype=dtype), params)
        y, state = model.apply(low, state, x.astype(dtype), key=key, train=train)
        return ops.astype(y, dtype=jnp.float32), state

    return Layer(f"{model.name}_{jnp.dtype(dtype).name}", model.init, apply, model.children,
                 model.kind)


# ---- timing ------------------------------------------------------------------------------------
def _block(tree):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready(), tree)


def interleaved(fns: dict, reps: int, warmup: int = 3) -> dict:
    """Median seconds per call of each zero-argument function, called alternately (in forward
    then reverse order, so that neither always runs first)."""
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
    return {k: statistics.median(v) for k, v in times.items()}


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
            for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    total += times * matmul_flops(sub)
    return total


def _temp_mb(compiled):
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


def profile(f, hlo_text: str, calls: int = 5, top: int = 12) -> list | None:
    """The `top` XLA operations by time per call of `f` (a compiled step), from a JAX profiler
    trace: [(name, ms per call, output shape)]. Times are summed over the threads that ran an
    operation (on CPU one operation may run on several at once). None if tracing fails."""
    import collections
    import glob
    import re
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as d:
            jax.profiler.start_trace(d)
            try:
                for _ in range(calls):
                    _block(f())
            finally:
                jax.profiler.stop_trace()
            data = jax.profiler.ProfileData.from_file(
                glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)[0])
    except Exception:  # noqa: BLE001 - profiling is a diagnostic, never a failure
        return None
    total = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if line.name == "python":
                continue
            for ev in line.events:
                if not ev.name.startswith(("ThunkExecutor", "end:", "Threadpool", "Slinky")):
                    total[ev.name] += ev.duration_ns
    out = []
    for name, ns in total.most_common(top):
        m = re.search(r"%" + re.escape(name) + r" = (\S+)", hlo_text)
        out.append((name, ns / calls / 1e6, m.group(1) if m else ""))
    return out


def peak_mb():
    """The device's peak memory so far in this process (MiB), or None where not reported."""
    stats = jax.devices()[0].memory_stats()
    return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None


def bench_matmul(n: int, reps: int, dtype=jnp.float32) -> dict:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    f = jax.jit(jnp.matmul).lower(a, b).compile()
    t = interleaved({"mm": lambda: f(a, b)}, reps, warmup=2)["mm"]
    return {"kind": "gemm", "case": f"matmul {n}x{n}x{n} {jnp.dtype(dtype).name}",
            "dtype": jnp.dtype(dtype).name, "ms": t * 1e3, "gflops": 2 * n**3 / t / 1e9}


def _init(model: Layer, input_shape, seed: int):
    """(params, state) of `model`, initialized in one compiled program (not op by op)."""
    init = jax.jit(lambda key: model.init(key, input_shape)[:2])
    return init(jax.random.PRNGKey(seed))


def _copy(tree):
    """Fresh buffers with the same values (for arguments that a call donates)."""
    return jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)), tree)


def bench_step(case: str, spec: dict, *, reps: int, eager_reps: int, compile_reps: int,
               dtype, matmul_gflops: float | None, torch: bool, seed: int = 0,
               profile_top: int = 0) -> dict:
    """Custom vs builtin jitted training step of one model (see the module docstring)."""
    from fnn.train.step import make_train_step

    model = build(spec)
    if jnp.dtype(dtype) != jnp.float32:
        model = in_dtype(model, dtype)
    params, state = _init(model, spec["input"], seed)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((spec["batch"], *spec["input"])), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, spec["batch"]), jnp.int32)
    key = jax.random.PRNGKey(seed)
    opt = optax.adam(1e-3)
    args = (params, state, jax.jit(opt.init)(params), (x, y), key)

    compiled, compile_s, temp = {}, {g: [] for g in GRADS}, {}
    for i in range(compile_reps):  # a fresh step function each time, so nothing is cached
        for g in (GRADS if i % 2 == 0 else GRADS[::-1]):
            step = make_train_step(model, opt, grad=g)  # jitted; params, state, opt donated
            t0 = time.perf_counter()
            compiled[g] = step.lower(*args).compile()
            compile_s[g].append(time.perf_counter() - t0)
            temp[g] = _temp_mb(compiled[g])
    flops = matmul_flops(jax.make_jaxpr(make_train_step(model, opt, grad="builtin",
                                                        jit=False))(*args))

    carry = {g: _copy(args[:3]) for g in GRADS}

    def chained(g):  # each call donates the previous call's results, as in training
        def call():
            *carry[g], metrics = compiled[g](*carry[g], (x, y), key)
            return metrics
        return call

    med = interleaved({g: chained(g) for g in GRADS}, reps)
    faults = {g: page_faults(chained(g), 3 if reps < 10 else 10) for g in GRADS}
    tinfo = torch_step(spec, dtype, seed) if torch else None
    if tinfo is not None:
        med["torch"], tinfo["threads"], tinfo["ms_by_threads"] = time_torch(tinfo.pop("step"),
                                                                            reps)

    eager = {g: make_train_step(model, opt, grad=g, jit=False) for g in GRADS}
    eager_med = interleaved({g: (lambda f=f: f(*args)) for g, f in eager.items()}, eager_reps,
                            warmup=1) if eager_reps else {}

    row = {"kind": "step", "case": case, "desc": describe_spec(spec), "batch": spec["batch"],
           "dtype": jnp.dtype(dtype).name, "gflop": flops / 1e9}
    for g in GRADS:
        row[f"{g}_ms"] = med[g] * 1e3
        row[f"{g}_compile_s"] = statistics.median(compile_s[g])
        row[f"{g}_eager_ms"] = eager_med[g] * 1e3 if g in eager_med else None
        row[f"{g}_gflops"] = flops / med[g] / 1e9
        row[f"{g}_temp_mb"] = temp[g]
        row[f"{g}_faults"] = faults[g]
    row["ratio"] = med["custom"] / med["builtin"]
    row["compile_ratio"] = row["custom_compile_s"] / row["builtin_compile_s"]
    row["matmul_share"] = row["custom_gflops"] / matmul_gflops if matmul_gflops else None
    row["peak_mb"] = peak_mb()
    row["torch_ms"] = med["torch"] * 1e3 if "torch" in med else None
    row["torch_speedup"] = med["torch"] / med["custom"] if "torch" in med else None
    row["torch"] = tinfo
    if profile_top:
        row["profile"] = {g: profile(chained(g), compiled[g].as_text(), top=profile_top)
                          for g in GRADS}
    return row


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
        epoch = make_train_epoch(make_train_step(model, opt, grad=g, jit=False),
                                 batch_size=spec["batch"])
        t0 = time.perf_counter()
        compiled[g] = epoch.lower(params, state, opt_state, x, y, key).compile()
        compile_s[g] = time.perf_counter() - t0
        carry[g] = _copy((params, state, opt_state))

    def chained(g):
        def call():
            *carry[g], metrics = compiled[g](*carry[g], x, y, key)
            return metrics
        return call

    med = interleaved({g: chained(g) for g in GRADS}, reps, warmup=1)
    steps = steps_per_epoch(x.shape[0], spec["batch"])
    row = {"kind": "epoch", "case": "digits epoch",
           "desc": f"{describe_spec(spec)}, {x.shape[0]} examples, {steps} steps, lax.scan",
           "steps": steps, "ratio": med["custom"] / med["builtin"]}
    for g in GRADS:
        row[f"{g}_ms"] = med[g] * 1e3
        row[f"{g}_us_per_step"] = med[g] / steps * 1e6
        row[f"{g}_compile_s"] = compile_s[g]
    return row


# ---- PyTorch, the same architectures (optional) ------------------------------------------------
def time_torch(step, reps: int):
    """(median seconds, threads, {threads: ms}) of PyTorch's step at its faster thread count
    (all cores or one), and the times at each.

    Timed on its own, not interleaved with JAX: PyTorch's OpenMP threads spin a while after each
    step and would slow the next call. On a loaded machine its multi-threaded step can be far
    slower than its single-threaded one, so both are tried and the faster one is reported.
    """
    import torch

    default = torch.get_num_threads()
    times = {}
    for threads in sorted({default, 1}, reverse=True):
        torch.set_num_threads(threads)
        times[threads] = interleaved({"torch": step}, reps)["torch"]
    torch.set_num_threads(default)
    time.sleep(0.5)  # let the spinning threads go idle before JAX runs again
    best = min(times, key=times.get)
    return times[best], best, {str(k): v * 1e3 for k, v in times.items()}


def torch_step(spec: dict, dtype, seed: int = 0) -> dict | None:
    """{'step': zero-argument eager CPU training step, 'version', 'threads'}, or None without
    torch. Same architecture, batch and optimizer (Adam); bf16 via torch.autocast."""
    try:
        import torch
    except ImportError:
        return None
    from torch import nn as tnn

    torch.manual_seed(seed)
    model = _torch_model(spec, tnn)
    if len(spec["input"]) == 3:  # PyTorch's native layout NCHW
        h, w, c = spec["input"]
        x = torch.randn(spec["batch"], c, h, w)
    else:
        x = torch.randn(spec["batch"], *spec["input"])
    y = torch.randint(0, 10, (spec["batch"],))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    low = jnp.dtype(dtype) != jnp.float32

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        return jnp.zeros(())  # nothing to wait for: the CPU step is synchronous

    return {"step": step, "version": torch.__version__}


def _torch_model(spec, tnn):
    def conv(c_in, c_out, k=3, stride=1):
        return tnn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2)

    if spec["kind"] == "mlp":
        sizes = (math.prod(spec["input"]), *spec["hidden"])
        layers = [tnn.Flatten()]
        for m, n in zip(sizes[:-1], sizes[1:]):
            layers += [tnn.Linear(m, n), tnn.ReLU()]
        return tnn.Sequential(*layers, tnn.Linear(sizes[-1], 10))
    h, w, c = spec["input"]
    if spec["kind"] == "cnn":
        layers = []
        for ch in spec["channels"]:
            layers += [conv(c, ch), tnn.ReLU(), tnn.MaxPool2d(2)]
            c, h, w = ch, h // 2, w // 2
        return tnn.Sequential(*layers, tnn.Flatten(), tnn.Linear(c * h * w, 10))

    class Block(tnn.Module):  # fnn.nn.ResidualBlock
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.main = tnn.Sequential(conv(c_in, c_out, stride=stride), tnn.BatchNorm2d(c_out),
                                       tnn.ReLU(), conv(c_out, c_out), tnn.BatchNorm2d(c_out))
            self.short = (tnn.Sequential(conv(c_in, c_out, 1, stride), tnn.BatchNorm2d(c_out))
                          if stride != 1 or c_in != c_out else tnn.Identity())

        def forward(self, x):
            return tnn.functional.relu(self.main(x) + self.short(x))

    widths = spec["widths"]
    layers = [conv(c, widths[0]), tnn.BatchNorm2d(widths[0]), tnn.ReLU()]
    for i, ch in enumerate(widths):
        layers.append(Block(widths[max(i - 1, 0)], ch, 2 if i else 1))
    return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(),
                          tnn.Linear(widths[-1], 10))


# ---- gate micro-benchmarks ---------------------------------------------------------------------
def gate_inputs(quick: bool = False) -> dict:
    """gate name -> list of (label, make(rng, dtype) -> (args, kwargs)) at a realistic size."""
    E = (4, 8) if quick else (256, 1024)  # noqa: N806 - the elementwise shape
    IMG, C = ((2, 6, 6, 3), 3) if quick else ((64, 32, 32, 32), 32)  # noqa: N806
    LOGITS = (4, 5) if quick else (256, 1000)  # noqa: N806
    K, M = E[1], E[1]  # noqa: N806 - matmul (N, K) @ (K, M)

    def normal(r, shape, dtype, scale=1.0):
        return jnp.asarray(scale * r.standard_normal(shape), dtype)

    def positive(r, shape, dtype):
        return jnp.asarray(r.uniform(0.5, 2.0, shape), dtype)

    def one(make=normal, **kw):
        return lambda r, d: ((make(r, E, d),), dict(kw))

    def two(make_y=normal, make_x=normal):
        return lambda r, d: ((make_x(r, E, d), make_y(r, E, d)), {})

    def labels(r, d):
        return (normal(r, LOGITS, d), jnp.asarray(r.integers(0, LOGITS[1], LOGITS[0]))), {}

    def bn(r, d):
        c = IMG[-1]
        return ((normal(r, IMG, d), 1 + normal(r, (c,), d, 0.1), normal(r, (c,), d),
                 normal(r, (c,), d), positive(r, (c,), d)), {"train": True})

    def conv(stride, w_shape):
        return lambda r, d: ((normal(r, IMG, d), normal(r, w_shape, d, 0.1)),
                             {"stride": stride, "padding": "SAME"})

    def pool(window, stride=None):
        return lambda r, d: ((normal(r, IMG, d),), {"window": window, "stride": stride})

    other = {"float32": "bfloat16"}
    specs = {
        **{g: one() for g in ("exp", "negative", "abs", "relu", "leaky_relu", "elu", "gelu",
                               "silu", "softplus", "sigmoid", "tanh", "stop_gradient")},
        "log": one(make=positive), "sqrt": one(make=positive),
        **{g: two() for g in ("add", "subtract", "multiply", "maximum", "minimum", "mse")},
        "divide": two(positive), "power": two(normal, positive),
        "where": lambda r, d: ((jnp.asarray(r.standard_normal(E) > 0), normal(r, E, d),
                                normal(r, E, d)), {}),
        "astype": lambda r, d: ((normal(r, E, d),),
                                {"dtype": other.get(jnp.dtype(d).name, "float32")}),
        "maxout": one(pieces=4),
        "matmul": lambda r, d: ((normal(r, (E[0], K), d), normal(r, (K, M), d)), {}),
        "affine": lambda r, d: ((normal(r, (E[0], K), d), normal(r, (K, M), d),
                                 normal(r, (M,), d)), {}),
        "transpose": one(), "reshape": one(shape=(E[1], E[0])),
        "broadcast_to": lambda r, d: ((normal(r, (1, E[1]), d),), {"shape": E}),
        "concatenate": lambda r, d: ((normal(r, (E[0], E[1] // 2), d),
                                      normal(r, (E[0], E[1] // 2), d)), {"axis": 1}),
        "take": lambda r, d: ((normal(r, (E[1], E[0]), d), jnp.asarray(
            r.integers(0, E[1], E[0]))), {"axis": 0}),
        "index": one(index=(slice(None), slice(0, E[1] // 2))),
        "softmax_cross_entropy": labels, "svm_loss": labels,
        "l2_penalty": lambda r, d: ((normal(r, (K, M), d),), {"scale": 1e-3}),
        **{g: one(axis=-1) for g in ("sum", "mean", "max", "logsumexp", "softmax",
                                      "log_softmax")},
        "batch_norm": bn,
        "layer_norm": lambda r, d: ((normal(r, E, d), normal(r, E[-1:], d),
                                     normal(r, E[-1:], d)), {}),
        "dropout": lambda r, d: ((normal(r, E, d), jax.random.PRNGKey(0)), {"rate": 0.5}),
    }
    sizes = {"batch_norm": f"{IMG} train", "softmax_cross_entropy": f"{LOGITS}",
             "svm_loss": f"{LOGITS}", "matmul": f"{(E[0], K)}@{(K, M)}",
             "affine": f"{(E[0], K)}@{(K, M)}+b", "l2_penalty": f"{(K, M)}", "maxout": f"{E} /4",
             "take": f"{(E[1], E[0])}[{E[0]} rows]"}
    rows = {g: [(sizes.get(g, f"{E}"), f)] for g, f in specs.items()}
    w3 = (3, 3, C, C)
    rows["conv2d"] = [(f"{IMG}*{w3} SAME", conv(1, w3)),
                      (f"{IMG}*{w3} stride 2", conv(2, w3)),
                      (f"{IMG}*{(1, 1, C, 2 * C)} stride 2", conv(2, (1, 1, C, 2 * C)))]
    rows["max_pool2d"] = [(f"{IMG} 2x2", pool(2)), (f"{IMG} 3x3 stride 2", pool(3, 2))]
    rows["avg_pool2d"] = [(f"{IMG} 2x2", pool(2)), (f"{IMG} 3x3 stride 2", pool(3, 2))]
    return rows


def bench_gate(name: str, label: str, make, *, reps: int, dtype, seed: int = 0) -> dict:
    from fnn import registry
    from fnn.check.gates import is_float, random_cotangent

    gate = registry[name]
    rng = np.random.default_rng(seed)
    args, kwargs = make(rng, dtype)
    diff = [i for i, a in enumerate(args) if is_float(a)]
    needs = tuple(i in diff for i in range(len(args)))

    def merge(dargs):
        full = list(args)
        for i, d in zip(diff, dargs):
            full[i] = d
        return full

    def forward(*dargs):
        return gate.forward(*merge(dargs), **kwargs)[0]

    def custom(g, *dargs):
        out, saved = gate.forward(*merge(dargs), **kwargs)
        grads = gate.call_vjp(g, saved, needs, kwargs)
        return out, tuple(jnp.zeros_like(args[i]) if grads[i] is None else grads[i] for i in diff)

    def builtin(g, *dargs):
        out, pullback = jax.vjp(forward, *dargs)
        return out, pullback(g)

    dargs = [args[i] for i in diff]
    g = random_cotangent(jax.eval_shape(forward, *dargs), rng)
    fns = {k: jax.jit(f).lower(g, *dargs).compile() for k, f in (("custom", custom),
                                                                    ("builtin", builtin))}
    med = interleaved({k: (lambda f=f: f(g, *dargs)) for k, f in fns.items()}, reps)
    return {"kind": "gate", "case": name, "desc": label, "dtype": jnp.dtype(dtype).name,
            "custom_ms": med["custom"] * 1e3, "builtin_ms": med["builtin"] * 1e3,
            "ratio": med["custom"] / med["builtin"]}


# ---- the whole run -----------------------------------------------------------------------------
def machine() -> str:
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(line.split(":", 1)[1].strip() for line in f
                           if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        kind = f"CPU {cpu}, {os.cpu_count()} cores"
    else:
        kind = f"{dev.platform.upper()} {dev.device_kind}"
    return f"{kind} ({jax.default_backend()} backend), jax {jax.__version__}"


def _load():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run(*, only=None, reps: int = 50, dtype="float32", quick: bool = False, torch: bool = True,
        eager: bool = True, profile_top: int = 0, log=print) -> dict:
    """Run the cases named in `only` (default all; gate names select single gates)."""
    from fnn import registry

    only = set(only or CASES)
    unknown = only - set(CASES) - set(registry)
    if unknown:
        raise ValueError(f"unknown bench case(s) {', '.join(sorted(unknown))}; choose from "
                         f"{', '.join(CASES)} or gate names")
    gates = sorted(registry) if "gates" in only else sorted(only & set(registry))
    dtype = jnp.dtype(dtype)
    result = {"device": machine(), "dtype": dtype.name, "reps": reps, "quick": quick,
              "load": [_load()], "rows": []}
    rows = result["rows"]
    steps = [c for c in STEP_CASES if c in only]
    mm = {}
    for d in {jnp.dtype(jnp.float32), dtype}:
        if steps or "gemm" in only:
            rows.append(bench_matmul(256 if quick else 2048, max(3, reps // 3), d))
            mm[d] = rows[-1]["gflops"]
            log(_fmt_row(rows[-1]))
    specs = model_specs(quick)
    for case in steps:
        rows.append(bench_step(case, specs[case], reps=reps, dtype=dtype,
                               eager_reps=(1 if quick else max(3, reps // 10)) if eager else 0,
                               compile_reps=1 if quick else 3, matmul_gflops=mm.get(dtype),
                               torch=torch, profile_top=profile_top))
        log(_fmt_row(rows[-1]))
    if "epoch" in only:
        rows.append(bench_epoch(reps=max(3, reps // 5), limit=200 if quick else None))
        log(_fmt_row(rows[-1]))
    inputs = gate_inputs(quick)
    for name in gates:
        for label, make in inputs.get(name, ()):
            rows.append(bench_gate(name, label, make, reps=reps, dtype=dtype))
            log(_fmt_row(rows[-1]))
        if name not in inputs:
            log(f"gate {name}: no benchmark size declared in fnn.bench.gate_inputs")
    result["load"].append(_load())
    result["targets"] = targets(rows)
    return result


def targets(rows) -> list:
    """Issue 5's targets, each as {'what', 'value', 'limit', 'met'}, for the rows present."""
    out = []

    def add(what, value, limit, at_most=True):
        if value is not None:
            out.append({"what": what, "value": value, "limit": limit,
                        "met": bool(value <= limit if at_most else value >= limit)})

    for r in rows:
        if r["kind"] == "step":
            c = r["case"]
            add(f"{c}: hand-written / built-in step time", r["ratio"], TARGET_RATIO[c])
            add(f"{c}: hand-written / built-in compile time", r["compile_ratio"],
                TARGET_COMPILE_RATIO)
            if c in TARGET_TORCH_SPEEDUP:
                add(f"{c}: PyTorch eager / hand-written step time", r["torch_speedup"],
                    TARGET_TORCH_SPEEDUP[c], at_most=False)
            if c in TARGET_MATMUL_SHARE:
                add(f"{c}: step GFLOP/s / matmul GFLOP/s", r["matmul_share"],
                    TARGET_MATMUL_SHARE[c], at_most=False)
        elif r["kind"] == "gate":
            add(f"gate {r['case']} {r['desc']}: hand-written / built-in", r["ratio"], 1.0)
    return out


# ---- output ------------------------------------------------------------------------------------
def _f(v, fmt="{:.2f}"):
    return "n/a" if v is None else fmt.format(v)


STEP_COLUMNS = [("case", "case", "{}"), ("custom ms", "custom_ms", "{:.2f}"),
                ("jax.grad ms", "builtin_ms", "{:.2f}"), ("ratio", "ratio", "{:.3f}"),
                ("compile c/b s", None, None), ("eager c/b ms", None, None),
                ("GFLOP/step", "gflop", "{:.3f}"), ("GFLOP/s c", "custom_gflops", "{:.1f}"),
                ("% matmul", "matmul_share", "{:.0%}"), ("torch ms", "torch_ms", "{:.2f}"),
                ("torch/custom", "torch_speedup", "{:.2f}"), ("temp MiB c/b", None, None),
                ("page faults c/b", None, None), ("peak MiB", "peak_mb", "{:.0f}")]


def _step_cells(r):
    cells = []
    for _, key, fmt in STEP_COLUMNS:
        if key is not None:
            cells.append(_f(r[key], fmt))
        else:
            cells.append(None)
    cells[4] = f"{r['custom_compile_s']:.2f}/{r['builtin_compile_s']:.2f}"
    cells[5] = f"{_f(r['custom_eager_ms'], '{:.1f}')}/{_f(r['builtin_eager_ms'], '{:.1f}')}"
    cells[11] = f"{_f(r['custom_temp_mb'], '{:.1f}')}/{_f(r['builtin_temp_mb'], '{:.1f}')}"
    cells[12] = f"{_f(r['custom_faults'], '{:.0f}')}/{_f(r['builtin_faults'], '{:.0f}')}"
    return cells


def _fmt_row(r) -> str:
    if r["kind"] == "gemm":
        return f"{r['case']}: {r['ms']:.2f} ms, {r['gflops']:.1f} GFLOP/s"
    if r["kind"] == "step":
        return "  ".join(f"{h}={c}" for (h, _, _), c in zip(STEP_COLUMNS, _step_cells(r)))
    if r["kind"] == "epoch":
        return (f"{r['case']}: custom {r['custom_ms']:.1f} ms, jax.grad {r['builtin_ms']:.1f} ms "
                f"per epoch of {r['steps']} steps, ratio {r['ratio']:.3f}")
    return (f"gate {r['case']:22s} {r['desc']:34s} custom {r['custom_ms']:8.3f} ms  jax.vjp "
            f"{r['builtin_ms']:8.3f} ms  ratio {r['ratio']:.3f}")


def markdown(result) -> str:
    """The run's rows as Markdown tables (what docs/benchmarks.md shows)."""
    rows = result["rows"]
    out = [f"Device: {result['device']}; dtype {result['dtype']}; {result['reps']} reps; "
           f"1-min load average {result['load'][0]} before, {result['load'][-1]} after.", ""]
    for r in rows:
        if r["kind"] == "gemm":
            out.append(f"Reference: {r['case']}: {r['ms']:.2f} ms, **{r['gflops']:.1f} GFLOP/s**.")
    steps = [r for r in rows if r["kind"] == "step"]
    if steps:
        out += ["", "| " + " | ".join(h for h, _, _ in STEP_COLUMNS) + " |",
                "|" + "---|" * len(STEP_COLUMNS)]
        out += ["| " + " | ".join(_step_cells(r)) + " |" for r in steps]
        out += [""] + [f"- {r['case']}: {r['desc']}" for r in steps]
        tv = next((r["torch"] for r in steps if r.get("torch")), None)
        if tv:
            out.append(f"- PyTorch {tv['version']}, eager CPU step, Adam, at its faster thread "
                       f"count (all cores or 1): " + ", ".join(
                           f"{r['case']} {r['torch']['threads']}" for r in steps if r["torch"]))
    for r in rows:
        if r["kind"] == "epoch":
            out += ["", f"Digits epoch ({r['desc']}): custom {r['custom_ms']:.1f} ms "
                    f"({r['custom_us_per_step']:.0f} us/step), jax.grad {r['builtin_ms']:.1f} ms "
                    f"({r['builtin_us_per_step']:.0f} us/step), ratio {r['ratio']:.3f}; compile "
                    f"{r['custom_compile_s']:.2f} / {r['builtin_compile_s']:.2f} s."]
    for r in steps:
        for g, ops_ in (r.get("profile") or {}).items():
            if ops_:
                out += ["", f"Profile of the {r['case']} step, {g} gradients (XLA operations, "
                        "ms per step summed over threads):", "",
                        "| operation | output | ms |", "|---|---|---|"]
                out += [f"| {n} | {shape} | {ms:.2f} |" for n, ms, shape in ops_]
    gates = [r for r in rows if r["kind"] == "gate"]
    if gates:
        out += ["", "| gate | size | custom ms | jax.vjp ms | ratio |", "|---|---|---|---|---|"]
        out += [f"| {r['case']} | {r['desc']} | {r['custom_ms']:.3f} | {r['builtin_ms']:.3f} | "
                f"{r['ratio']:.3f} |" for r in gates]
    if result.get("targets"):
        out += ["", "| target | value | limit | met |", "|---|---|---|---|"]
        out += [f"| {t['what']} | {t['value']:.3f} | {t['limit']} | "
                f"{'yes' if t['met'] else '**no**'} |" for t in result["targets"]
                if not t["what"].startswith("gate ")]
        slow = [t for t in result["targets"] if t["what"].startswith("gate ") and not t["met"]]
        n = sum(t["what"].startswith("gate ") for t in result["targets"])
        if n:
            out.append(f"\nGates no slower than jax.vjp: {n - len(slow)} of {n}" +
                       (f"; slower: {', '.join(t['what'][5:].split(':')[0] for t in slow)}."
                        if slow else "."))
    return "\n".join(out) + "\n"


def print_tables(result, log=print) -> None:
    log("")
    log(markdown(result))


# ---- command line ------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--reps", type=int, default=50, help="timed calls per function (default 50)")
    p.add_argument("--only", metavar="CASES",
                   help=f"comma-separated cases: {','.join(CASES)} and/or gate names")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype (parameters stay float32)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few reps: a smoke run")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the tables as Markdown")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    p.add_argument("--no-eager", action="store_true", help="skip the un-jitted steps")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="list the N most costly XLA operations of each step (jax.profiler)")


def main(args) -> dict:
    """Run the bench for parsed `args` (see add_arguments); print, and write JSON/Markdown."""
    if args.reps < 1:
        raise ValueError(f"--reps must be at least 1, got {args.reps}")
    reps = min(args.reps, 5) if args.quick else args.reps
    only = [c.strip() for c in args.only.split(",") if c.strip()] if args.only else None
    result = run(only=only, reps=reps, dtype=args.dtype, quick=args.quick,
                 torch=not args.no_torch, eager=not args.no_eager, profile_top=args.profile)
    print_tables(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(result))
    return result
