"""`python -m fnn bench` (and scripts/bench.py): the benchmarks of fnn.bench, a line per row as
it is measured (a progress bar on a terminal), then the tables; --json and --markdown write
them to files. Each step runs while the main thread waits for Ctrl-C (fnn.cli._progress): a
Ctrl-C stops within a second and prints the tables of the rows measured so far (no file is
written then), exit status 130."""

from __future__ import annotations

import json
import signal
import sys

from fnn.bench.cases import CASES
from fnn.bench.report import fmt_row, markdown
from fnn.bench.plan import finish, plan
from fnn.bench.timing import ATTEMPTS, LOAD_TOLERANCE
from fnn.cli._args import UsageError, number
from fnn.cli._exit import INTERRUPTED, OK, TERMINATED
from fnn.cli._progress import Progress, Stopped
from fnn.train.files import write_file


HELP = "time hand-written gradients against jax.grad (and PyTorch if installed)"
DESCRIPTION = (
    "Benchmark training steps (MLP, CNN, ResNet, digits MLP, LSTM and transformer "
    "language models), a digits epoch and every gate: fnn's hand-written VJPs vs "
    "jax.grad under jit, on JAX's device."
)

_at_least_1 = number(int, low=1, what="an integer >= 1")
_count = number(int, low=0, what="an integer >= 0")
_tolerance = number(float, low=0, what="a finite number >= 0")


def add_arguments(p) -> None:
    p.add_argument(
        "--reps", type=_at_least_1, default=50, help="timed calls per function (default 50)"
    )
    p.add_argument(
        "--only",
        metavar="CASES",
        help=f"comma-separated cases: {','.join(CASES)}, gate names and/or "
        "jax:MODEL for one plain JAX model of 'jax' (jax:fno)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="compute dtype (parameters stay float32)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes and few reps: a smoke run")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the tables as Markdown")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    p.add_argument(
        "--torch-path",
        metavar="DIR",
        help="a folder holding torch (pip install --target DIR torch), put on the "
        "path of PyTorch's own process only",
    )
    p.add_argument(
        "--load-tolerance",
        type=_tolerance,
        default=LOAD_TOLERANCE,
        metavar="L",
        help="time a side of a step row again when the 1-min load average moves by "
        f"more than L across it (default {LOAD_TOLERANCE})",
    )
    p.add_argument(
        "--attempts",
        type=_at_least_1,
        default=ATTEMPTS,
        metavar="N",
        help=f"how often a side is timed at most (default {ATTEMPTS})",
    )
    p.add_argument("--no-eager", action="store_true", help="skip the un-jitted steps")
    p.add_argument(
        "--profile",
        type=_count,
        default=0,
        metavar="N",
        help="list the N most costly XLA operations of each step (jax.profiler)",
    )


def run(args) -> int:
    """Run the bench for parsed `args`: print each row as it is measured, then the tables;
    write JSON/Markdown. 0 done; 130 (143) stopped by Ctrl-C (SIGTERM), the rows so far
    printed."""
    reps = min(args.reps, 5) if args.quick else args.reps
    only = [c.strip() for c in args.only.split(",") if c.strip()] if args.only else None
    try:
        result, steps = plan(
            only=only,
            reps=reps,
            dtype=args.dtype,
            quick=args.quick,
            torch=not args.no_torch,
            torch_path=args.torch_path,
            load_tolerance=args.load_tolerance,
            attempts=args.attempts,
            eager=not args.no_eager,
            profile_top=args.profile,
            tuning=getattr(args, "tuning", None),
        )
    except ValueError as e:  # an unknown --only case
        raise UsageError(f"--only: {e}") from None
    for name in result["missing"]:
        print(f"gate {name}: no benchmark size declared in fnn.bench.cases.gate_inputs")
    stopped = None
    with Progress(len(steps), "bench", unit="row") as progress:
        try:
            for label, measure in steps:
                for row in progress.run(label, measure):
                    result["rows"].append(row)
                    progress.write(fmt_row(row))
        except Stopped as e:
            stopped = e
    finish(result)
    if stopped is not None:
        result["interrupted"] = signal.Signals(stopped.signum).name
        print(
            f"fnn bench: interrupted by {result['interrupted']} after {progress.done} of "
            f"{progress.total} steps; the tables below hold the rows measured so far"
            + (" (--json/--markdown not written)" if args.json or args.markdown else ""),
            file=sys.stderr,
        )
    print("")
    print(markdown(result))
    if stopped is not None:
        return TERMINATED if stopped.signum == signal.SIGTERM else INTERRUPTED
    if args.json:
        write_file(args.json, json.dumps(result, indent=1).encode())
    if args.markdown:
        write_file(args.markdown, markdown(result).encode())
    return OK
