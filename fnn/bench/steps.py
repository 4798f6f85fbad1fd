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
from fnn.bench.timing import (interleaved, matmul_flops, page_faults, peak_mb, profile,
                              temp_mb, time_gate)
from fnn.bench.torch_ref import time_torch, torch_step
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


def bench_step(case: str, spec: dict, *, reps: int, eager_reps: int, compile_reps: int,
               dtype, reference=None, torch: bool, seed: int = 0, profile_top: int = 0) -> dict:
    """Custom vs builtin jitted training step of one model (see the module docstring).

    `reference` (a gemm(), or None) is timed interleaved with the custom step, so that the
    share of its FLOP/s that the step reaches compares the two under the same conditions.
    """
    from fnn.train.step import make_train_step

    model = build(spec)
    if jnp.dtype(dtype) != jnp.float32:
        model = in_dtype(model, dtype)
    params, state = _init(model, spec["input"], seed)
    rng = np.random.default_rng(seed)
    x, y = map(jnp.asarray, batch_of(spec, rng))
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
            temp[g] = temp_mb(compiled[g])
    flops = matmul_flops(jax.make_jaxpr(make_train_step(model, opt, grad="builtin",
                                                        jit=False))(*args))

    carry = {g: list(_copy(args[:3])) for g in GRADS}

    def chained(g):
        return _chained(compiled[g], carry[g], (x, y), key)

    med = interleaved({g: chained(g) for g in GRADS}, reps)
    if reference is not None:  # on its own: a big matmul between the steps would evict caches
        share = interleaved({"step": chained("custom"), "gemm": reference[0]}, max(3, reps // 2))
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
    row["gemm_gflops"] = reference[1] / share["gemm"] / 1e9 if reference is not None else None
    row["matmul_share"] = (flops / share["step"] / 1e9 / row["gemm_gflops"]
                           if reference is not None else None)
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
        carry[g] = list(_copy((params, state, opt_state)))

    def chained(g):
        return _chained(compiled[g], carry[g], x, y, key)

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


def bench_gate(name: str, label: str, make, *, reps: int, dtype, seed: int = 0,
               budget_s: float = 1.0) -> dict:
    """One gate at a realistic size (`make(rng, dtype) -> (args, kwargs)`): time_gate's row."""
    from fnn.ops import registry

    rng = np.random.default_rng(seed)
    args, kwargs = make(rng, dtype)
    t = time_gate(registry[name], args, kwargs, rng=rng, reps=reps, budget_s=budget_s)
    return {"kind": "gate", "case": name, "desc": label, "dtype": jnp.dtype(dtype).name,
            "custom_ms": t["custom"] * 1e3, "builtin_ms": t["builtin"] * 1e3,
            "ratio": t["custom"] / t["builtin"], "reps": t["reps"]}
