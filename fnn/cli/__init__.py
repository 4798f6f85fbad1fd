"""The command line: `python -m fnn <command> [options]` (or the `fnn` script).

Argument parsing and printing live here and only here: the libraries below return objects, the
commands print them. One module per command, each with HELP and DESCRIPTION (its lines in
--help), `add_arguments(parser)` (its options) and `run(args) -> exit status`:

    train.py      train a model into a run directory (fnn.train.train_run)
    sample.py     text from a trained language model (fnn.train.sample)
    gradcheck.py  every gate's VJP checked (fnn.check.gates), or a small model's gradients
    graph.py      the lecture's computational graphs, or a small model's, as .dot/.svg and text
    demo.py       the lecture's examples, fnn's gradients beside jax.grad's
    bench.py      the benchmarks (fnn.bench)
    launch.py     N processes of one run on this machine (fnn.train.distributed), like torchrun

`COMMANDS` maps each command's name to its module and `main(argv=None)` dispatches. A
command's errors print one line, `fnn <command>: error: ...`: a UsageError (an option's value
or a combination of options refused, fnn.cli._args) exits with status 2 as argparse's own
errors do, the others (fnn's own, bad values, missing files) with 1; set FNN_DEBUG=1 for a
traceback. The exit statuses are one table, fnn.cli._exit (also the epilog of every --help).
Shared by the long commands: fnn.cli._progress (a progress bar on a terminal, rows as they
come, Ctrl-C within a second). `python -m fnn --version` prints fnn's, JAX's and jaxlib's
versions and JAX's default backend.
"""

from __future__ import annotations

import argparse
import os
import sys

from fnn.cli import bench, demo, gradcheck, graph, launch, sample, train
from fnn.cli._args import HelpFormatter, UsageError
from fnn.cli._exit import EPILOG, FAILED, USAGE
from fnn.errors import FnnError

COMMANDS = {
    "train": train,
    "sample": sample,
    "gradcheck": gradcheck,
    "graph": graph,
    "demo": demo,
    "bench": bench,
    "launch": launch,
}


def version_text() -> str:
    """fnn's version and where it is imported from, JAX's and jaxlib's versions, and the
    backend JAX uses by default with its devices (what `--version` prints)."""
    from importlib.metadata import PackageNotFoundError, version

    import jax

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:  # run from a source tree that pip never installed
            return "unknown (not installed)"

    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # fnn/, imported from
    return (
        f"fnn {installed('fnn')} ({here})\n"
        f"jax {jax.__version__}, jaxlib {installed('jaxlib')}\n"
        f"default backend: {jax.default_backend()} ({len(devices)} device"
        f"{'s' * (len(devices) > 1)}: {', '.join(kinds)})"
    )


class _Version(argparse.Action):
    """--version: version_text(), computed when asked for (it starts JAX's backend)."""

    def __init__(
        self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None
    ):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fnn",
        description="fnn: neural networks with hand-written gradients.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--version",
        action=_Version,
        help="print fnn's, JAX's and jaxlib's versions and JAX's default backend",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(
            name,
            help=command.HELP,
            description=command.DESCRIPTION,
            usage=getattr(command, "SYNOPSIS", None),
            epilog=EPILOG,
            formatter_class=HelpFormatter,
        )
        command.add_arguments(sub)
        sub.add_argument(
            "--no-tune",
            action="store_true",
            help="keep JAX's default CPU settings (see fnn.runtime; FNN_NO_TUNE=1 does the same)",
        )
        sub.set_defaults(func=command.run)
    # what launch's processes may run: the other commands (given here: launch is one of them)
    subparsers.choices["launch"].set_defaults(commands=tuple(c for c in COMMANDS if c != "launch"))
    return parser


def main(argv: list[str] | None = None, *, tune: bool = False) -> int:
    """Run the command line with `argv` (default sys.argv[1:]); return the exit status.

    tune=True (the process's entry points: `python -m fnn`, the `fnn` script, scripts/) reports
    what `import fnn` did (fnn.runtime.tune_on_import, which honours this --no-tune) in
    args.tuning, or tunes now if that did not run; in-process callers keep theirs.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return USAGE
    args.tuning = None  # what fnn.runtime.tune_cpu did, for the commands that report it
    if tune and not args.no_tune:
        from fnn.runtime import AT_IMPORT, tune_cpu

        # `import fnn` has tuned already (it looks for --no-tune itself); else tune now
        args.tuning = AT_IMPORT if AT_IMPORT is not None else tune_cpu()
        if os.environ.get("FNN_DEBUG"):
            print(f"fnn: CPU tuning {args.tuning}", file=sys.stderr)
    elif tune:
        from fnn.runtime import AT_IMPORT

        if AT_IMPORT and (AT_IMPORT["xla_flags"] or AT_IMPORT["malloc"]):
            args.tuning = AT_IMPORT  # what is in effect, reported as it is
            print(
                "fnn: --no-tune came too late: `import fnn` had applied fnn's CPU settings "
                "already (set FNN_NO_TUNE=1 in the environment instead)",
                file=sys.stderr,
            )
        if os.environ.get("FNN_DEBUG"):
            print(f"fnn: --no-tune, JAX's defaults (at import: {AT_IMPORT})", file=sys.stderr)
    try:
        return args.func(args)
    except (FnnError, ValueError, OSError, FloatingPointError) as e:
        if os.environ.get("FNN_DEBUG"):
            raise
        print(f"fnn {args.command}: error: {e}", file=sys.stderr)
        return USAGE if isinstance(e, UsageError) else FAILED


def entry() -> int:
    """The process's entry point (`python -m fnn`, the `fnn` script): main with tune=True.
    A Ctrl-C during an XLA compilation leaves it running in a worker thread
    (fnn.train.interrupt.abandoned); the process then ends at once with os._exit, its output
    flushed, since finalizing Python under a running compilation aborts the process."""
    code = main(tune=True)
    from fnn.train.interrupt import abandoned

    if abandoned():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
