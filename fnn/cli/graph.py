"""`python -m fnn graph`: the lecture's computational graphs (`graph lecture`) or a small model's
(`graph --model mlp`), written as Graphviz .dot (.svg with Graphviz) and printed as text."""

from __future__ import annotations

import shutil

from fnn.check.graph import graph, graph_layers
from fnn.check.lecture import GRAPHS
from fnn.check.zoo import MODELS, small_model


HELP = "draw a computational graph with values and gradients on its edges"
DESCRIPTION = ("Draw the lecture's examples (`graph lecture`) or a small model (`graph --model "
               "mlp`) as Graphviz .dot (.svg with Graphviz) and text.")


def add_arguments(parser) -> None:
    parser.add_argument("what", nargs="?", choices=("lecture",),
                        help="'lecture': draw the lecture's worked examples")
    parser.add_argument("--model", choices=tuple(MODELS),
                        help="draw a small fnn.nn model at layer granularity")
    parser.add_argument("--out", default="graphs", metavar="DIR",
                        help="where the .dot (and .svg with Graphviz) files go (default: graphs)")
    parser.add_argument("--gate", help="the gate to explain (name or tape position)")
    parser.add_argument("--render", default="svg", choices=("svg", "png", "pdf"),
                        help="the format `dot` renders to when it is installed")


def _gate_arg(gate: str):
    return int(gate) if gate.lstrip("-").isdigit() else gate


def run(args) -> int:
    """Draw the lecture examples or a model; print the text views. 0 on success, 2 on misuse."""
    if not args.what and not args.model:
        print("fnn graph: say what to draw: `fnn graph lecture` or `fnn graph --model mlp`")
        return 2
    written = []
    if args.what == "lecture":
        for ex in GRAPHS:
            g = graph(ex.f, *ex.args, title=ex.title)
            print(g.to_text())
            print(g.explain(_gate_arg(args.gate) if args.gate else ex.explain) + "\n")
            written += g.save(args.out, ex.name, (args.render,))
    if args.model:
        model, params, state, x, y = small_model(args.model)
        g = graph_layers(model, params, state, x, y,
                         title=f"{args.model}: layers, values and gradients (norms)")
        print(g.to_text() + "\n")
        if args.gate:
            print(g.explain(_gate_arg(args.gate)) + "\n")
        written += g.save(args.out, args.model, (args.render,))
    print("wrote " + ", ".join(written))
    if not shutil.which("dot"):
        print("(Graphviz `dot` is not installed: only .dot files were written; render them with "
              "`dot -Tsvg FILE.dot -o FILE.svg` after installing graphviz)")
    return 0
