"""Per-device memory of the jitted train step on N devices, parameters replicated (data
parallel) or sharded (`shard="params"`, FSDP), from XLA's own figures.

    python scripts/bench_memory.py                      # 8 host CPU devices, every case
    python scripts/bench_memory.py --only mlp-large --reps 5 --json out.json

On the CPU it asks XLA for `--devices` host devices (XLA_FLAGS, before JAX starts). For each
case and each way it builds `make_train_step(model, adam, devices=N, shard=...)` (the step fit's
compiled loop runs), lowers and compiles it for the case's batch and reports, per device:
the parameter and optimizer-state bytes each device holds (its shard of every leaf), and
`compiled.memory_analysis()`: argument, output, alias (outputs written over donated
arguments) and temporary bytes, and their sum argument + output - alias + temp, about the
program's peak; and the collectives XLA's SPMD partitioner put in the compiled step (ops
in its HLO, by kind). Then it times `--reps` steps (median, after one warm-up call). Results are in
docs/benchmarks.md ("Sharded parameters").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = {  # name: (model, input shape of one example, batch size)
    "mlp": ("mlp", (1024, 1024), (784,), 256),  # python -m fnn bench's MLP
    "mlp-large": ("mlp", (4096, 4096), (784,), 256),  # 20 M parameters
    "resnet": ("resnet", (16, 32, 64), (32, 32, 3), 128),  # python -m fnn bench's ResNet
}

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=8, help="devices to split across (default 8)")
    p.add_argument("--only", help=f"comma-separated cases ({', '.join(CASES)})")
    p.add_argument("--grad", default="custom", choices=("custom", "builtin"))
    p.add_argument("--reps", type=int, default=3, help="timed steps per row (0: no timing)")
    p.add_argument("--json", help="also write the rows to this file")
    return p.parse_args(argv)


def leaf_bytes(dp, tree) -> tuple[int, int]:
    """(bytes of the whole tree, bytes of device 0's shard of it) under dp.param_sharding."""
    import jax
    import numpy as np

    total = per_device = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        size = np.dtype(leaf.dtype).itemsize
        total += leaf.size * size
        per_device += int(np.prod(dp.param_sharding(leaf).shard_shape(leaf.shape))) * size
    return total, per_device


def measure(name: str, shard: str, n: int, grad: str, reps: int) -> dict:
    import jax
    import numpy as np

    from fnn import nn, train
    from fnn.train.parallel import data_parallel

    kind, sizes, shape, batch = CASES[name]
    model = nn.mlp(sizes) if kind == "mlp" else nn.resnet(sizes)
    opt = train.make_optimizer("adam", 1e-3)
    ts = train.init_train_state(model, opt, shape, seed=0)
    dp = data_parallel(n, shard)
    step = train.make_train_step(model, opt, grad=grad, devices=dp)
    rng = np.random.default_rng(0)
    xb = (
        rng.standard_normal((batch, *shape)).astype(np.float32),
        rng.integers(0, 10, batch).astype(np.int32),
    )
    key = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    compiled = step.lower(ts.params, ts.state, ts.opt_state, xb, key).compile()
    compile_s = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    hlo = compiled.as_text()
    collectives = {op: len(re.findall(rf" {op}(?:-start)?\(", hlo)) for op in COLLECTIVES}
    params, params_dev = leaf_bytes(dp, ts.params)
    opt_b, opt_dev = leaf_bytes(dp, ts.opt_state)
    row = {
        "case": name,
        "shard": shard,
        "devices": n,
        "batch": batch,
        "grad": grad,
        "params": params,
        "params_per_device": params_dev,
        "opt_state": opt_b,
        "opt_state_per_device": opt_dev,
        "argument": ma.argument_size_in_bytes,
        "output": ma.output_size_in_bytes,
        "alias": ma.alias_size_in_bytes,
        "temp": ma.temp_size_in_bytes,
        "compile_s": compile_s,
        "collectives": {k: v for k, v in collectives.items() if v},
    }
    row["peak"] = row["argument"] + row["output"] - row["alias"] + row["temp"]
    if reps:
        p, s, o = ts.params, ts.state, ts.opt_state
        times = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            p, s, o, m = step(p, s, o, xb, key)
            jax.block_until_ready((p, m))
            times.append(time.perf_counter() - t0)
        row["step_ms"] = 1e3 * statistics.median(times[1:])
    return row


def mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def markdown(rows) -> str:
    head = (
        "| case | parameters | per device: params + Adam state | argument | output | "
        "alias | temp | arg + out - alias + temp | step (ms) | collectives |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        lines.append(
            f"| {r['case']}, {'sharded' if r['shard'] == 'params' else 'replicated'} "
            f"| {mib(r['params'])} MiB | {mib(r['params_per_device'] + r['opt_state_per_device'])}"
            f" | {mib(r['argument'])} | {mib(r['output'])} | {mib(r['alias'])} "
            f"| {mib(r['temp'])} | {mib(r['peak'])} "
            + (f"| {r['step_ms']:.0f} " if "step_ms" in r else "| - ")
            + "| "
            + ", ".join(f"{v} {k}" for k, v in r["collectives"].items())
            + " |"
        )
    return head + "\n".join(lines) + "\n(MiB per device; parameters: the whole model)"


def main(argv=None) -> int:
    args = parse(argv)
    if "jax" not in sys.modules and args.devices > 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = (
                f"{flags} --xla_force_host_platform_device_count={args.devices}"
            ).strip()
    import jax

    names = args.only.split(",") if args.only else list(CASES)
    unknown = [c for c in names if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"{args.devices} {jax.devices()[0].platform} devices, {os.cpu_count()} CPU cores, "
        f"{platform.processor() or platform.machine()}, jax {jax.__version__}, load "
        f"{' '.join(f'{x:.1f}' for x in load) if load else '?'}, grad={args.grad}",
        flush=True,
    )
    rows = []
    for name in names:
        for shard in ("none", "params"):
            rows.append(measure(name, shard, args.devices, args.grad, args.reps))
            print(json.dumps(rows[-1]), flush=True)
    print(markdown(rows))
    if load is not None:
        print(f"load after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
