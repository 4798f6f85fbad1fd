"""The whole run (`run`) and its command line (`add_arguments`, `main`): `python -m fnn bench`
and scripts/bench.py."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp

from fnn.bench.cases import CASES, STEP_CASES, gate_inputs, model_specs
from fnn.bench.report import fmt_row, markdown, print_tables, targets
from fnn.bench.steps import bench_epoch, bench_gate, bench_step
from fnn.bench.timing import bench_matmul, gemm, load_average, machine


def run(*, only=None, reps: int = 50, dtype="float32", quick: bool = False, torch: bool = True,
        eager: bool = True, profile_top: int = 0, tuning=None, log=print) -> dict:
    """Run the cases named in `only` (default all; gate names select single gates).
    `tuning`: what fnn.runtime.tune_cpu did before JAX started (recorded with the results)."""
    from fnn import registry

    only = set(only or CASES)
    unknown = only - set(CASES) - set(registry)
    if unknown:
        raise ValueError(f"unknown bench case(s) {', '.join(sorted(unknown))}; choose from "
                         f"{', '.join(CASES)} or gate names")
    gates = sorted(registry) if "gates" in only else sorted(only & set(registry))
    dtype = jnp.dtype(dtype)
    result = {"device": machine(), "dtype": dtype.name, "reps": reps, "quick": quick,
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "tuning": tuning,
              "load": [load_average()], "rows": []}
    rows = result["rows"]
    steps = [c for c in STEP_CASES if c in only]
    n = 256 if quick else 2048 if jax.default_backend() == "cpu" else 8192  # the gemm's size
    for d in sorted({jnp.dtype(jnp.float32), dtype}, key=str):
        if steps or "gemm" in only:
            rows.append(bench_matmul(n, max(3, reps // 3), d))
            log(fmt_row(rows[-1]))
    specs = model_specs(quick)
    reference = gemm(n, dtype) if steps else None  # built once, timed beside every step case
    for case in steps:
        rows.append(bench_step(case, specs[case], reps=reps, dtype=dtype,
                               eager_reps=(1 if quick else max(3, reps // 10)) if eager else 0,
                               compile_reps=1 if quick else 3, reference=reference,
                               torch=torch, profile_top=profile_top))
        log(fmt_row(rows[-1]))
    if "epoch" in only:
        rows.append(bench_epoch(reps=max(3, reps // 5), limit=200 if quick else None))
        log(fmt_row(rows[-1]))
    inputs = gate_inputs(quick)
    for name in gates:
        for label, make in inputs.get(name, ()):
            rows.append(bench_gate(name, label, make, reps=reps, dtype=dtype,
                                   budget_s=0.05 if quick else 1.0))
            log(fmt_row(rows[-1]))
        if name not in inputs:
            log(f"gate {name}: no benchmark size declared in fnn.bench.cases.gate_inputs")
    result["load"].append(load_average())
    result["targets"] = targets(rows)
    return result


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
                 torch=not args.no_torch, eager=not args.no_eager, profile_top=args.profile,
                 tuning=getattr(args, "tuning", None))
    print_tables(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(result))
    return result
