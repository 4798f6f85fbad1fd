"""`fnn.graph`: the computational graph of a function, with forward values and gradients on edges.

    g = fnn.graph(lambda x, y, z: (x + y) * z, -2.0, 5.0, -4.0)
    print(g)                      # text view: every gate with its inputs, value and gradient
    print(g.explain("multiply"))  # one gate: upstream gradient x local gradient = product
    g.to_dot()                    # Graphviz, lecture style: value above each edge (green),
    g.save("graphs", "simple")    # gradient below (red); .svg too when `dot` is installed

The function is recorded by fnn (float leaves of the differentiated arguments boxed on a fresh
tape), its outputs are seeded with ones, and the backward pass is replayed keeping what the
engine throws away: the upstream gradient of every gate and what its VJP sent to each input.
An edge carries the value that flows forward and the gradient that flows back along that edge
(where a value fans out, its edges' gradients add up to the value's gradient: the copy gate).
`graph_layers` draws a model of fnn.nn layers at layer granularity.
"""

from __future__ import annotations

import dataclasses
import html
import inspect
import math
import os
import re
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff import is_float
from fnn.transforms import trace
from fnn.errors import describe
from fnn.pytrees import path_name

# JAX's primitives under the names of the lecture's gates (for the drawing and `explain`)
LECTURE_NAMES = {"lax.add": "add", "lax.add_any": "add", "lax.sub": "subtract",
                 "lax.mul": "multiply", "lax.div": "divide", "lax.neg": "negative",
                 "lax.max": "maximum", "lax.min": "minimum", "lax.pow": "power",
                 "lax.integer_pow": "power", "lax.dot_general": "matmul", "lax.exp": "exp",
                 "lax.log": "log", "lax.tanh": "tanh", "lax.logistic": "sigmoid",
                 "lax.reduce_sum": "sum", "lax.reduce_max": "max", "lax.sqrt": "sqrt",
                 "lax.abs": "abs"}
SYMBOLS = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/", "power": "**",
           "matmul": "@", "negative": "*-1", "maximum": "max", "minimum": "min", "sigmoid": "σ"}
COMMUTATIVE = {"add", "multiply", "maximum", "minimum"}


@dataclasses.dataclass
class Node:
    key: str
    label: str  # drawn in the node (the lecture's '+', '*-1', 'exp', or a layer's name)
    kind: str  # "input" | "gate" | "const" | "output"
    name: str  # in the text view: an input's name, '#3' for a gate, a layer's name
    op: str  # in the text view: 'add +', 'affine, relu'
    records: tuple = ()  # tape positions drawn as this node
    value: object = None  # what the node produces (an input's value, a gate's first output)
    grad: object = None  # its total gradient
    where: str = ""  # call site(s)


@dataclasses.dataclass
class Edge:
    src: str
    dst: str
    value: object
    grad: object  # the gradient sent back along this edge (None: nothing reached it)


class Graph:
    """A recorded graph: `nodes`, `edges`, and the raw tape with upstream gradients and VJPs."""

    def __init__(self, tr, names: list, title: str = "", groups=None):
        """tr: the Trace; names: a name per positional argument (its leaves are named by their
        paths below it); groups: None (a node per gate) or [(label, tape positions)]."""
        self.tape, self.title = tr.tape, title
        self.outputs = [(node, v) for node, v in zip(tr.out_nodes, jax.tree_util.tree_leaves(tr.out))
                        if node is not None]
        self.inputs = {node: path_name(path, names[a]) for a, path, node, _ in tr.inputs()}
        self.input_values = {node: value for _, _, node, value in tr.inputs()}
        self.upstream, self.sent, self.grads = _replay(tr)
        self.nodes, self.edges = _build(self, groups)

    # -- views ------------------------------------------------------------------------------
    def to_dot(self) -> str:
        lines = ["digraph fnn {", '  rankdir=LR; nodesep=0.4; ranksep=0.9;',
                 '  node [fontname="Helvetica"]; edge [fontname="Helvetica", fontsize=11];']
        if self.title:
            lines.append(f'  labelloc="t"; label="{_esc(self.title)}";')
        for n in self.nodes:
            style = {"input": 'shape=plaintext, fontsize=14',
                     "gate": 'shape=circle, style=filled, fillcolor="#eef3fb"',
                     "layer": 'shape=box, style="rounded,filled", fillcolor="#eef3fb"',
                     "const": 'shape=box, style=dashed, color=gray50, fontcolor=gray40',
                     "output": 'shape=plaintext, fontsize=14'}[n.kind]
            tip = f', tooltip="{_esc(n.where)}"' if n.where else ""
            lines.append(f'  {n.key} [label="{_esc(n.label)}", {style}{tip}];')
        for e in self.edges:
            label = f'<font color="darkgreen">{html.escape(_fmt(e.value))}</font>'
            if e.grad is not None:
                label += f'<br/><font color="red">{html.escape(_fmt(e.grad))}</font>'
            lines.append(f"  {e.src} -> {e.dst} [label=<{label}>];")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_text(self) -> str:
        rows = [("node", "op", "inputs", "value", "gradient", "at")]
        names = {n.key: n.name for n in self.nodes}
        incoming: dict = {}
        for e in self.edges:
            incoming.setdefault(e.dst, []).append(names[e.src])
        for n in self.nodes:
            if n.kind == "const":
                continue
            rows.append((n.name, n.op, ", ".join(incoming.get(n.key, [])), _fmt(n.value),
                         _fmt(n.grad), " ".join(os.path.basename(w) for w in n.where.split())))
        widths = [min(48, max(len(r[i]) for r in rows)) for i in range(6)]
        out = [self.title] if self.title else []
        for r in rows:
            out.append("  " + "  ".join(c[:w].ljust(w) for c, w in zip(r, widths)).rstrip())
        out.insert(2 if self.title else 1, "  " + "-" * (sum(widths) + 10))
        return "\n".join(out)

    __str__ = to_text

    def explain(self, gate) -> str:
        """One gate: its upstream gradient, local gradient and their product, per input.

        `gate`: a tape position (int) or a gate name (its first application)."""
        pos = gate if isinstance(gate, int) else next(
            (i for i, r in enumerate(self.tape.records) if gate in (r.gate.name, gate_name(r))),
            None)
        if pos is None or not 0 <= pos < len(self.tape.records):
            raise ValueError(f"no gate {gate!r} in this graph; gates: "
                             f"{[gate_name(r) for r in self.tape.records]}")
        rec, g, sent = self.tape.records[pos], self.upstream[pos], self.sent[pos]
        lines = [f"gate #{pos} {gate_name(rec)} ({_gate_label(rec)}) at {rec.site}"]
        rule = _local_rule(rec.gate)
        if rule:
            lines.append(f"  rule: {rule}")
        if g is None:
            return "\n".join(lines + ["  no gradient reaches this gate's output"])
        names = self._names()
        scalar = not rec.multi and all(np.size(x) == 1 for x in rec.inputs + rec.outs)
        lines.append(f"  upstream gradient  {_fmt(g)}")
        if scalar:
            local = rec.pullback(jnp.ones_like(g))
        for k, j, p, x in _input_leaves(rec):
            if p is None:
                continue
            who = f"input {k} ({names.get(p, '#?')} = {_fmt(x)})"
            if scalar:
                lines.append(f"  {who}: local gradient {_fmt(local[k])} x upstream {_fmt(g)} = "
                             f"{_fmt(sent[k])}")
            else:
                lines.append(f"  {who}: VJP sends back {_fmt(rec.leaf_grads(k, sent[k])[j])}")
        if not scalar:
            lines.append("  (the local gradient is a Jacobian; the hand-written VJP multiplies "
                         "the upstream gradient by it without forming it)")
        return "\n".join(lines)

    def _names(self) -> dict:
        names = dict(self.inputs)
        for pos, rec in enumerate(self.tape.records):
            for i in rec.out_ids:
                if i is not None:
                    names[i] = f"#{pos}"
        return names

    # -- files ------------------------------------------------------------------------------
    def save(self, directory, name: str, formats=("svg",)) -> list[str]:
        """Write name.dot into `directory`, and name.<fmt> per format when `dot` is installed."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{name}.dot")
        with open(path, "w") as fh:
            fh.write(self.to_dot())
        written = [path]
        if shutil.which("dot"):
            for fmt in formats:
                target = os.path.join(directory, f"{name}.{fmt}")
                subprocess.run(["dot", f"-T{fmt}", path, "-o", target], check=True,
                               capture_output=True, timeout=60)
                written.append(target)
        return written


# ----------------------------------------------------------------------------------------------


def graph(f, *args, argnums=None, title: str | None = None) -> Graph:
    """Record `f(*args)` with fnn and return its Graph (values and gradients on every edge).

    argnums: the arguments to differentiate (default: every argument with a float leaf); the
    others are constants of the graph. Inputs are named after f's parameters.
    """
    names = _param_names(f, len(args))
    if argnums is None:
        argnums = tuple(i for i, a in enumerate(args) if any(
            is_float(l) for l in jax.tree_util.tree_leaves(a)))
    return Graph(trace(f, *args, argnums=argnums), names, title or "", None)


def graph_layers(model, params, state, x, y=None, *, train: bool = True,
                 title: str | None = None) -> Graph:
    """A model of fnn.nn layers (its top-level children, for a serial model) as one node per
    layer, with the loss (softmax cross-entropy against integer labels y) when y is given."""
    from fnn import ops

    children = model.children if model.kind == "serial" else ((model.name, model),)
    labels = [key for key, _ in children] + (["loss"] if y is not None else [])

    def f(p, h):
        for key, layer in children:
            with jax.named_scope(f"fnn_graph_{key}"):
                sub_p = p[key] if model.kind == "serial" else p
                sub_s = state[key] if model.kind == "serial" else state
                h, _ = layer.apply(sub_p, sub_s, h, train=train)
        if y is not None:
            with jax.named_scope("fnn_graph_loss"):
                h = ops.softmax_cross_entropy(h, y)
        return h

    tr = trace(f, params, x, argnums=(0, 1))
    groups = [(label, [pos for pos, rec in enumerate(tr.tape.records)
                       if f"fnn_graph_{label}" in rec.scope.split("/")]) for label in labels]
    return Graph(tr, ["", "x"], title or model.name, groups)


def _param_names(f, n):
    try:
        params = [p.name for p in inspect.signature(f).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"arg{i}" for i in range(n)]


def _replay(tr):
    """The backward pass, keeping each gate's upstream gradient, what it sent back, every total."""
    n = len(tr.tape.records)
    upstream, sent, grads = [None] * n, [None] * n, {}

    def record(pos, rec, g, needs, got):
        dxs = rec.pullback(g, needs)
        upstream[pos] = g
        for i, gi, had in zip(rec.out_ids, jax.tree_util.tree_leaves(g), got):
            if i is not None and had:  # outputs that got no gradient stay out of grads
                grads[i] = gi
        sent[pos] = tuple(None if not need else
                          (jax.tree_util.tree_map(jnp.zeros_like, x) if dx is None else dx)
                          for need, dx, x in zip(needs, dxs, rec.inputs))
        return sent[pos]

    leaves = tr.backward(tr.seeds(), record)
    for node, g in leaves.items():
        grads.setdefault(node, g)
    return upstream, sent, grads


def _build(graph: Graph, groups):
    tape, per_gate = graph.tape, groups is None
    owner, nodes, edges = {}, [], {}
    for node, name in graph.inputs.items():
        nodes.append(Node(f"i{node}", name, "input", name, "input", (),
                          graph.input_values[node], graph.grads.get(node)))
    if per_gate:
        groups = [(None, [pos]) for pos in range(len(tape.records))]
    producer = {node: f"i{node}" for node in graph.inputs}
    for gi, (label, positions) in enumerate(groups):
        positions = list(positions)
        if not positions:
            continue
        recs = [tape.records[p] for p in positions]
        gates = ", ".join(dict.fromkeys(gate_name(r) for r in recs))
        if label is None:  # one gate
            key, name, kind = f"g{positions[0]}", f"#{positions[0]}", "gate"
            label = _gate_label(recs[0])
            op = gates if label == gates else f"{gates} {label}"
        else:  # one layer
            key, name, kind, op = f"L{gi}", label, "layer", gates
            label = f"{label}\n{gates}" if len(gates) <= 40 else label
        last = recs[-1]
        out_id = next((i for i in last.out_ids if i is not None), None)
        nodes.append(Node(key, label, kind, name, op, tuple(positions), last.outs[0],
                          graph.grads.get(out_id), " ".join(dict.fromkeys(r.site for r in recs))))
        for p, rec in zip(positions, recs):
            owner[p] = key
            for i in rec.out_ids:
                if i is not None:
                    producer[i] = key
    for pos, rec in enumerate(tape.records):
        dst = owner.get(pos)
        for k, j, p, x in _input_leaves(rec):
            if p is None:
                if per_gate and np.size(x) > 1:  # scalars are folded into the gate's label
                    ckey = f"c{pos}_{k}"
                    label = f"const {describe(x)}"
                    nodes.append(Node(ckey, label, "const", label, "const", value=x))
                    edges[(ckey, dst, None)] = Edge(ckey, dst, x, None)
                continue
            src = producer[p]
            if src == dst:
                continue
            dx = None if graph.sent[pos] is None else rec.leaf_grads(k, graph.sent[pos][k])[j]
            e = edges.get((src, dst, p))
            if e is None:
                edges[(src, dst, p)] = Edge(src, dst, x, dx)
            elif dx is not None:
                e.grad = dx if e.grad is None else e.grad + dx
    for j, (node, v) in enumerate(graph.outputs):
        key, name = f"out{j}", "f" if len(graph.outputs) == 1 else f"f{j}"
        nodes.append(Node(key, name, "output", name, "output", (), v, jnp.ones_like(v)))
        edges[(producer[node], key, node)] = Edge(producer[node], key, v, jnp.ones_like(v))
    return nodes, list(edges.values())


def _input_leaves(rec) -> list:
    """(input position k, leaf index j, parent node or None, leaf value) per input leaf."""
    return [(k, j, p, x) for k, (ps, arg) in enumerate(zip(rec.parents, rec.inputs))
            for j, (p, x) in enumerate(zip(ps, jax.tree_util.tree_leaves(arg)))]


def gate_name(rec) -> str:
    """The gate's name as the lecture calls it ('multiply' for JAX's mul primitive)."""
    return LECTURE_NAMES.get(rec.gate.name, rec.gate.name)


def _gate_label(rec) -> str:
    name = gate_name(rec)
    if name == "index":
        return f"[{_index_str(rec.static.get('index'))}]"
    if rec.gate.name == "lax.integer_pow":
        return f"**{rec.static['y']}"
    sym = SYMBOLS.get(name, name)
    consts = [(k, x) for k, _, p, x in _input_leaves(rec)
              if p is None and np.size(x) == 1 and len(rec.inputs) == 2]
    if name in SYMBOLS and len(consts) == 1:
        k, c = consts[0]
        c = _fmt(c)
        if k == 1 or name in COMMUTATIVE:
            return f"{sym}{c}" if len(sym) <= 2 else f"{sym}(·, {c})"
        return f"{c}{sym}x"
    return sym


def _index_str(index) -> str:
    items = index if isinstance(index, tuple) else (index,)

    def one(i):
        if isinstance(i, slice):
            return ":".join("" if v is None else str(v) for v in (i.start, i.stop)) + (
                f":{i.step}" if i.step is not None else "")
        return "..." if i is Ellipsis else ("None" if i is None else str(i))
    return ", ".join(one(i) for i in items)


def _local_rule(gate) -> str:
    doc = gate.__doc__ or ""
    m = re.search(r"Local gradients?\b.*?(?:\n\s*\n|$)", doc, re.S)
    text = " ".join((m.group(0) if m else doc.split("\n\n")[0]).split())
    if len(text) > 240:  # whole sentences only
        text = text[:text.rfind(". ", 0, 240) + 1] or text[:240]
    return text


def _num(x: float) -> str:
    """2 decimals from 1 up (-12, 1.37), 2 significant digits below (0.73, -0.53, 0.088)."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if 1 <= abs(x) < 1e4:
        return f"{x:.2f}".rstrip("0").rstrip(".")
    return f"{x:.2g}"


def _fmt(v) -> str:
    """Lecture-style numbers: '-12', '0.73'; small arrays listed; larger ones by shape + norm."""
    if v is None:
        return ""
    if isinstance(v, (tuple, list)):  # the outputs of a multi-output gate
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    a = np.asarray(v)
    if a.dtype == jax.dtypes.float0:
        return "0"
    if a.size == 1:
        return _num(float(a.reshape(())))
    if a.size <= 4:
        return "[" + ", ".join(_num(float(x)) for x in a.reshape(-1)) + "]"
    return f"{describe(a)} norm {_num(float(np.linalg.norm(a.astype(np.float64))))}"


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# -- the lecture's examples and the command line ---------------------------------------------------
def _neuron(w0, x0, w1, x1, w2):
    from fnn import ops
    return 1.0 / (1.0 + ops.exp(-(w0 * x0 + w1 * x1 + w2)))


def _sigmoid_neuron(w0, x0, w1, x1, w2):
    from fnn import ops
    return ops.sigmoid(w0 * x0 + w1 * x1 + w2)


# (file name, title, f, args, the gate to explain)
LECTURE = [
    ("simple", "f(x, y, z) = (x + y) z", lambda x, y, z: (x + y) * z, (-2.0, 5.0, -4.0),
     "multiply"),
    ("neuron", "f(w, x) = 1 / (1 + exp(-(w0 x0 + w1 x1 + w2)))", _neuron,
     (2.0, -1.0, -3.0, -2.0, -3.0), "divide"),
    ("sigmoid_gate", "the same neuron with one sigmoid gate: local gradient s (1 - s)",
     _sigmoid_neuron, (2.0, -1.0, -3.0, -2.0, -3.0), "sigmoid"),
    ("copy_gate", "a value used twice: f(x) = 3x + 4x (the gradients add)",
     lambda x: x * 3.0 + x * 4.0, (1.5,), "add"),
]


def add_graph_arguments(parser) -> None:
    parser.add_argument("what", nargs="?", choices=("lecture",),
                        help="'lecture': draw the lecture's worked examples")
    parser.add_argument("--model", choices=("mlp", "cnn", "resnet"),
                        help="draw a small fnn.nn model at layer granularity")
    parser.add_argument("--out", default="graphs", metavar="DIR",
                        help="where the .dot (and .svg with Graphviz) files go (default: graphs)")
    parser.add_argument("--gate", help="the gate to explain (name or tape position)")
    parser.add_argument("--render", default="svg", choices=("svg", "png", "pdf"),
                        help="the format `dot` renders to when it is installed")


def graph_main(args) -> int:
    """Draw the lecture examples or a model; print the text views. 0 on success, 2 on misuse."""
    if not args.what and not args.model:
        print("fnn graph: say what to draw: `fnn graph lecture` or `fnn graph --model mlp`")
        return 2
    written = []
    if args.what == "lecture":
        for name, title, f, fargs, gate in LECTURE:
            g = graph(f, *fargs, title=title)
            print(g.to_text())
            print(g.explain(_gate_arg(args.gate) if args.gate else gate) + "\n")
            written += g.save(args.out, name, (args.render,))
    if args.model:
        from fnn.check.gradcheck import small_model

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


def _gate_arg(gate: str):
    return int(gate) if gate.lstrip("-").isdigit() else gate
