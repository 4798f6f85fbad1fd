"""Step time of one run on 8 host CPU devices: one process with 8 devices against two
processes of 4 devices each (`python -m fnn launch`, jax.distributed, gloo collectives); and
on 2 devices: one process of 2 against two processes of 1.

    python scripts/bench_processes.py                   # 3 interleaved rounds
    python scripts/bench_processes.py --rounds 5 --epochs 8 --hidden 1024

Each round runs `python -m fnn train` once per way and per --shard (none: data parallel;
params: sharded parameters), the ways interleaved so that a busy machine slows them alike.
The step time of a run is the median over its epochs after the first of the epoch's time
(fit's record time_s: compilation excluded) divided by its steps; the table gives the median
over the rounds and their range. The 1-minute load average (os.getloadavg, what `uptime`
prints) is printed before and after. Results are in docs/benchmarks.md ("Several processes").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAYS = {
    "1 process x 8 devices": (1, 8),
    "2 processes x 4 devices": (2, 4),  # (processes,
    "1 process x 2 devices": (1, 2),
    "2 processes x 1 device": (2, 1),
}  # devices each)


def run(way, shard, args, folder, env):
    """The step times (ms) of the epochs after the first of one training run."""
    out = os.path.join(folder, f"run-{len(os.listdir(folder))}")
    train = [
        "train",
        "--out",
        out,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--hidden",
        str(args.hidden),
        "--no-progress",
        "--schedule",
        "constant",
        "--chunk-seconds",
        str(args.chunk_seconds),
        *(["--shard", "params"] if shard == "params" else []),
    ]
    n, k = WAYS[way]
    if n == 1:
        argv = [sys.executable, "-m", "fnn", *train, "--devices", str(k)]
        env = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={k}")
    else:
        argv = [
            sys.executable,
            "-m",
            "fnn",
            "launch",
            "--nproc",
            str(n),
            "--devices-per-process",
            str(k),
            "--",
            *train,
        ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{way}, shard {shard}: exit {done.returncode}\n{done.stderr[-3000:]}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steps = records[-1]["step"] // len(records)
    return statistics.median(r["time_s"] / steps * 1e3 for r in records[1:])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--ways", default=",".join(WAYS), help="comma-separated, of: " + ", ".join(WAYS))
    p.add_argument("--shards", default="none,params")
    p.add_argument(
        "--chunk-seconds",
        type=float,
        default=0.05,
        help="train's (0.05: its "
        "default; a large value runs each epoch as one chunk: no agreement between "
        "the processes inside an epoch)",
    )
    args = p.parse_args()
    ways = args.ways.split(",")
    unknown = [w for w in ways if w not in WAYS]
    if unknown:
        p.error(f"--ways: unknown {unknown}; choose among {list(WAYS)}")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    load = [os.getloadavg()[0]]
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; MLP {args.hidden} "
        f"on digits, batch {args.batch_size}, {args.epochs} epochs, {args.rounds} rounds, "
        f"chunks of {args.chunk_seconds:g} s; "
        f"load average {load[0]:.2f} at the start",
        flush=True,
    )
    times = {(w, s): [] for s in args.shards.split(",") for w in ways}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.rounds):
            for (way, shard), got in times.items():
                got.append(run(way, shard, args, folder, env))
                print(f"round {r + 1}: {way}, shard {shard}: {got[-1]:.2f} ms a step", flush=True)
    load.append(os.getloadavg()[0])
    print(f"\nload average {load[0]:.2f} at the start, {load[1]:.2f} at the end\n")
    print("| shard | way | step (ms), median | range |\n|---|---|---|---|")
    for (way, shard), got in times.items():
        print(f"| {shard} | {way} | {statistics.median(got):.2f} | {min(got):.2f}-{max(got):.2f} |")


if __name__ == "__main__":
    main()
