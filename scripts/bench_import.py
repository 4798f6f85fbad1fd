"""Is a plain `import fnn` script as fast as `python -m fnn`? (issue 15, "fast by default")

    python scripts/bench_import.py                 # 3 rounds of the bench's CNN step, 30 reps each
    python scripts/bench_import.py --rounds 5 --reps 50 --case resnet

Each round starts three fresh processes that time the same train step (the bench's `cnn` case,
fnn.bench.steps.bench_step, both gradient columns, no eager or PyTorch timings):

    plain import     python -c "import fnn; ... fnn.bench.run(...)"   (tuned by `import fnn`)
    python -m fnn    python -m fnn bench --only cnn ...                   (the command line)
    FNN_NO_TUNE=1    the plain-import script with JAX's defaults          (what scripts got before)

The rounds interleave the three, so a busy machine slows them alike; the table gives each way's
median over the rounds of its per-process median step time. Results are in docs/benchmarks.md
("Fast by default on import").
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

PLAIN = r"""
import json, sys
import fnn
from fnn import runtime
from fnn.bench.plan import run
r = run(only=[sys.argv[1]], reps=int(sys.argv[2]), torch=False, eager=False)
step = [row for row in r["rows"] if row["kind"] == "step"][0]
print(json.dumps({"custom_ms": step["custom_ms"], "builtin_ms": step["builtin_ms"],
                  "at_import": runtime.AT_IMPORT}))
"""


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "FNN_NO_TUNE")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _run(cmd, env) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{r.stderr[-3000:]}")
    return r


def plain(case: str, reps: int, **env) -> dict:
    r = _run([sys.executable, "-c", PLAIN, case, str(reps)], _env(**env))
    return json.loads(r.stdout.strip().splitlines()[-1])


def module(case: str, reps: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bench.json")
        _run(
            [
                sys.executable,
                "-m",
                "fnn",
                "bench",
                "--only",
                case,
                "--reps",
                str(reps),
                "--no-torch",
                "--no-eager",
                "--json",
                path,
            ],
            _env(),
        )
        with open(path) as f:
            step = [row for row in json.load(f)["rows"] if row["kind"] == "step"][0]
    return {"custom_ms": step["custom_ms"], "builtin_ms": step["builtin_ms"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--case", default="cnn", help="a step case of fnn.bench (default cnn)")
    args = p.parse_args(argv)
    ways = {
        "plain `import fnn`": lambda: plain(args.case, args.reps),
        "`python -m fnn bench`": lambda: module(args.case, args.reps),
        "plain, FNN_NO_TUNE=1": lambda: plain(args.case, args.reps, FNN_NO_TUNE="1"),
    }
    got = {w: [] for w in ways}
    for i in range(args.rounds):
        for way, fn in ways.items():
            got[way].append(fn())
            print(f"round {i + 1} {way}: {got[way][-1]}", file=sys.stderr)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{args.case} step, {args.reps} reps x {args.rounds} rounds, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load {load:.1f}"
    )
    print("| how the process starts | fnn.grad step (ms) | jax.grad step (ms) |")
    print("|---|---|---|")
    for way, rows in got.items():
        c = statistics.median(r["custom_ms"] for r in rows)
        b = statistics.median(r["builtin_ms"] for r in rows)
        print(f"| {way} | {c:.1f} | {b:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
