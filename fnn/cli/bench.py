"""`python -m fnn bench` (and scripts/bench.py): the benchmarks of fnn.bench, a line per row as
it is measured, then the tables; --json and --markdown write them to files."""

from __future__ import annotations

import json

from fnn.bench.cases import CASES
from fnn.bench.report import markdown
from fnn.bench.run import run as run_bench
from fnn.bench.timing import ATTEMPTS, LOAD_TOLERANCE
from fnn.train.files import write_file


HELP = "time hand-written gradients against jax.grad (and PyTorch if installed)"
DESCRIPTION = ("Benchmark training steps (MLP, CNN, ResNet, digits MLP, LSTM and transformer "
               "language models), a digits epoch and every gate: fnn's hand-written VJPs vs "
               "jax.grad under jit, on JAX's device.")


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
    p.add_argument("--torch-path", metavar="DIR",
                   help="a folder holding torch (pip install --target DIR torch), put on the "
                        "path of PyTorch's own process only")
    p.add_argument("--load-tolerance", type=float, default=LOAD_TOLERANCE, metavar="L",
                   help="time a side of a step row again when the 1-min load average moves by "
                        f"more than L across it (default {LOAD_TOLERANCE})")
    p.add_argument("--attempts", type=int, default=ATTEMPTS, metavar="N",
                   help=f"how often a side is timed at most (default {ATTEMPTS})")
    p.add_argument("--no-eager", action="store_true", help="skip the un-jitted steps")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="list the N most costly XLA operations of each step (jax.profiler)")


def run(args) -> int:
    """Run the bench for parsed `args`; print, and write JSON/Markdown."""
    if args.reps < 1:
        raise ValueError(f"--reps must be at least 1, got {args.reps}")
    if args.attempts < 1 or not args.load_tolerance >= 0:
        raise ValueError(f"--attempts must be at least 1 and --load-tolerance at least 0, got "
                         f"{args.attempts} and {args.load_tolerance}")
    reps = min(args.reps, 5) if args.quick else args.reps
    only = [c.strip() for c in args.only.split(",") if c.strip()] if args.only else None
    result = run_bench(only=only, reps=reps, dtype=args.dtype, quick=args.quick,
                       torch=not args.no_torch, torch_path=args.torch_path,
                       load_tolerance=args.load_tolerance, attempts=args.attempts,
                       eager=not args.no_eager,
                       profile_top=args.profile, tuning=getattr(args, "tuning", None), log=print)
    print("")
    print(markdown(result))
    if args.json:
        write_file(args.json, json.dumps(result, indent=1).encode())
    if args.markdown:
        write_file(args.markdown, markdown(result).encode())
    return 0
