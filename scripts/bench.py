"""Benchmark: fnn's hand-written gradients against jax.grad on the same forward, under jit.

    python scripts/bench.py                 # the MLP gradient step, table + JSON
    python scripts/bench.py --reps 100 --json out.json

Each case builds one loss function from fnn's gates; `fnn.grad(loss)` and `jax.grad(loss)` are
jitted, compiled (timed), warmed up, then called alternately (interleaved, so drift in the
machine's speed hits both alike); the median over `--reps` calls is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fnn  # noqa: E402
from fnn import ops  # noqa: E402


def mlp_case(sizes=(784, 1024, 1024, 10), batch=256, seed=0):
    rng = np.random.default_rng(seed)
    params = [{"w": jnp.asarray(rng.standard_normal((m, n)) * np.sqrt(2.0 / m), jnp.float32),
               "b": jnp.zeros(n, jnp.float32)} for m, n in zip(sizes[:-1], sizes[1:])]
    x = jnp.asarray(rng.standard_normal((batch, sizes[0])), jnp.float32)
    y = jnp.asarray(rng.integers(0, sizes[-1], batch))

    def loss(params, x, y):
        h = x
        for layer in params[:-1]:
            h = ops.relu(ops.affine(h, layer["w"], layer["b"]))
        return ops.softmax_cross_entropy(ops.affine(h, params[-1]["w"], params[-1]["b"]), y)

    flops = 6 * batch * sum(m * n for m, n in zip(sizes[:-1], sizes[1:]))  # fwd 2, bwd 4 per MAC
    return f"mlp {'-'.join(map(str, sizes))} batch {batch}", loss, (params, x, y), flops


def _block(tree):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready(), tree)


def compile_time(fn, args):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def interleaved(fns: dict, args, reps: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        for f in fns.values():
            _block(f(*args))
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            _block(f(*args))
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_case(name, loss, args, flops, reps):
    custom, c_compile = compile_time(fnn.grad(loss), args)
    builtin, b_compile = compile_time(jax.grad(loss), args)
    med = interleaved({"custom": custom, "builtin": builtin}, args, reps)
    return {"case": name, "custom_ms": med["custom"] * 1e3, "builtin_ms": med["builtin"] * 1e3,
            "ratio": med["custom"] / med["builtin"],
            "custom_gflops": flops / med["custom"] / 1e9, "builtin_gflops": flops / med["builtin"] / 1e9,
            "custom_compile_s": c_compile, "builtin_compile_s": b_compile}


def machine() -> str:
    dev = jax.devices()[0]
    return (f"{dev.platform.upper()} {getattr(dev, 'device_kind', '')}, {os.cpu_count()} cores, "
            f"{platform.processor() or platform.machine()}, jax {jax.__version__}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--json", help="write results to this JSON file")
    args = p.parse_args(argv)
    rows = [bench_case(*mlp_case(), reps=args.reps)]
    print(f"device: {machine()}")
    print(f"{'case':40s} {'custom ms':>10s} {'jax.grad ms':>12s} {'ratio':>6s} {'GFLOP/s':>8s} "
          f"{'compile c/b s':>14s}")
    for r in rows:
        print(f"{r['case']:40s} {r['custom_ms']:10.2f} {r['builtin_ms']:12.2f} {r['ratio']:6.3f} "
              f"{r['custom_gflops']:8.1f} {r['custom_compile_s']:6.2f}/{r['builtin_compile_s']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": machine(), "reps": args.reps, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
