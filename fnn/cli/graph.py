"""`python -m fnn graph`: the lecture's computational graphs (`graph lecture`) or a small model's
(`graph --model mlp`), written as Graphviz .dot (.svg with Graphviz) and printed as text."""

from __future__ import annotations

import shutil
import signal
import sys

from fnn.check.graph import graph, graph_layers
from fnn.cli._args import UsageError
from fnn.cli._exit import INTERRUPTED, OK, TERMINATED
from fnn.cli._progress import Progress, Stopped
from fnn.check.lecture import GRAPHS
from fnn.check.zoo import MODELS, small_model


HELP = "draw a computational graph with values and gradients on its edges"
DESCRIPTION = (
    "Draw the lecture's examples (`graph lecture`) or a small model (`graph --model "
    "mlp`) as Graphviz .dot (.svg with Graphviz) and text."
)


def add_arguments(parser) -> None:
    parser.add_argument(
        "what",
        nargs="?",
        choices=("lecture",),
        help="'lecture': draw the lecture's worked examples",
    )
    parser.add_argument(
        "--model", choices=tuple(MODELS), help="draw a small fnn.nn model at layer granularity"
    )
    parser.add_argument(
        "--out",
        default="graphs",
        metavar="DIR",
        help="where the .dot (and .svg with Graphviz) files go (default: graphs)",
    )
    parser.add_argument("--gate", help="the gate to explain (name or tape position)")
    parser.add_argument(
        "--render",
        default="svg",
        choices=("svg", "png", "pdf"),
        help="the format `dot` renders to when it is installed",
    )


def _gate_arg(gate: str):
    return int(gate) if gate.lstrip("-").isdigit() else gate


def run(args) -> int:
    """Draw the lecture examples or a model; print the text views. 0 on success, 2 on misuse,
    130 (143) when a Ctrl-C (SIGTERM) stopped it (what was drawn before is printed). Each
    drawing is a step of a progress bar on a terminal (a line on stderr elsewhere): a model's
    takes seconds."""
    if not args.what and not args.model:
        raise UsageError("say what to draw: `fnn graph lecture` or `fnn graph --model mlp`")
    written = []
    steps = (
        [(ex.name, lambda ex=ex: graph(ex.f, *ex.args, title=ex.title), ex) for ex in GRAPHS]
        if args.what == "lecture"
        else []
    )
    if args.model:

        def draw():
            model, params, state, x, y = small_model(args.model)
            return graph_layers(
                model,
                params,
                state,
                x,
                y,
                title=f"{args.model}: layers, values and gradients (norms)",
            )

        steps.append((args.model, draw, None))
    with Progress(len(steps), "graph", unit="graph", lines=True) as progress:
        try:
            for name, draw, ex in steps:
                g = progress.run(name, draw)
                if ex is not None:
                    progress.write(g.to_text())
                    progress.write(
                        g.explain(_gate_arg(args.gate) if args.gate else ex.explain) + "\n"
                    )
                else:
                    progress.write(g.to_text() + "\n")
                    if args.gate:
                        progress.write(g.explain(_gate_arg(args.gate)) + "\n")
                written += g.save(args.out, name, (args.render,))
        except Stopped as e:
            print(
                f"fnn graph: interrupted by {signal.Signals(e.signum).name} after "
                f"{progress.done} of {progress.total} graphs",
                file=sys.stderr,
            )
            if written:
                print("wrote " + ", ".join(written))
            return TERMINATED if e.signum == signal.SIGTERM else INTERRUPTED
    print("wrote " + ", ".join(written))
    if not shutil.which("dot"):
        print(
            "(Graphviz `dot` is not installed: only .dot files were written; render them with "
            "`dot -Tsvg FILE.dot -o FILE.svg` after installing graphviz)"
        )
    return OK
