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
`graph_layers` draws a model of fnn.nn layers at layer granularity. How a graph is drawn
(DOT, text, one gate explained): fnn.check.graph_render.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff import is_float
from fnn.check import graph_render
from fnn.check.graph_render import gate_label, gate_name, input_leaves
from fnn.errors import describe
from fnn.ops import softmax_cross_entropy
from fnn.pytrees import path_name
from fnn.transforms import trace


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
        self.outputs = [
            (node, v)
            for node, v in zip(tr.out_nodes, jax.tree_util.tree_leaves(tr.out))
            if node is not None
        ]
        self.inputs = {node: path_name(path, names[a]) for a, path, node, _ in tr.inputs()}
        self.input_values = {node: value for _, _, node, value in tr.inputs()}
        self.upstream, self.sent, self.grads = _replay(tr)
        self.nodes, self.edges = _build(self, groups)

    # -- views (fnn.check.graph_render) -----------------------------------------------------
    def to_dot(self) -> str:
        return graph_render.to_dot(self)

    def to_text(self) -> str:
        return graph_render.to_text(self)

    __str__ = to_text

    def explain(self, gate) -> str:
        """One gate: its upstream gradient, local gradient and their product, per input.

        `gate`: a tape position (int) or a gate name (its first application)."""
        return graph_render.explain(self, gate)

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
                subprocess.run(
                    ["dot", f"-T{fmt}", path, "-o", target],
                    check=True,
                    capture_output=True,
                    timeout=60,
                )
                written.append(target)
        return written


# ----------------------------------------------------------------------------------------------


def graph(f, *args, argnums=None, title: str | None = None) -> Graph:
    """Record `f(*args)` with fnn and return its Graph (values and gradients on every edge).

    Inputs are named after f's parameters. `python -m fnn graph` draws such graphs.

    Args:
        f: the function to record.
        *args: its positional arguments.
        argnums: the arguments to differentiate (default: every argument with a float leaf); the
            others are constants of the graph.
        title: a title for the drawing.

    Returns:
        The `Graph`: its `nodes` and `edges` (values and gradients on every edge), and the raw
        tape with upstream gradients and VJPs.

    Raises:
        TypeError: argnums is not an int or a non-empty tuple of ints, or an input is complex.
        MissingRuleError: `f` uses a JAX primitive for which fnn has no rule.
    """
    names = _param_names(f, len(args))
    if argnums is None:
        argnums = tuple(
            i for i, a in enumerate(args) if any(is_float(l) for l in jax.tree_util.tree_leaves(a))
        )
    return Graph(trace(f, *args, argnums=argnums), names, title or "", None)


def graph_layers(
    model, params, state, x, y=None, *, train: bool = True, title: str | None = None
) -> Graph:
    """A model of fnn.nn layers (its top-level children, for a serial model) as one node per
    layer, with the loss (softmax cross-entropy against integer labels y) when y is given. A
    layer that computes nothing at this input (a Flatten of inputs already flat) has no node."""
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
                h = softmax_cross_entropy(h, y)
        return h

    tr = trace(f, params, x, argnums=(0, 1))
    groups = [
        (
            label,
            [
                pos
                for pos, rec in enumerate(tr.tape.records)
                if f"fnn_graph_{label}" in rec.scope.split("/")
            ],
        )
        for label in labels
    ]
    return Graph(tr, ["", "x"], title or model.name, groups)


def _param_names(f, n):
    try:
        params = [
            p.name
            for p in inspect.signature(f).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
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
        sent[pos] = tuple(
            None if not need else (jax.tree_util.tree_map(jnp.zeros_like, x) if dx is None else dx)
            for need, dx, x in zip(needs, dxs, rec.inputs)
        )
        return sent[pos]

    leaves = tr.backward(tr.seeds(), record)
    for node, g in leaves.items():
        grads.setdefault(node, g)
    return upstream, sent, grads


def _build(graph: Graph, groups):
    """(nodes, edges) of the graph: a node per boxed input leaf, per gate (`groups` None) or
    per group of tape positions (a layer), per constant array a gate takes (per gate only) and
    per output leaf; an edge per value passed between two of them."""
    per_gate = groups is None
    if per_gate:
        groups = [(None, [pos]) for pos in range(len(graph.tape.records))]
    nodes = [_input_node(graph, node, name) for node, name in graph.inputs.items()]
    owner, producer = {}, {node: f"i{node}" for node in graph.inputs}
    for gi, (label, positions) in enumerate(groups):
        positions = list(positions)
        if not positions:
            continue
        nodes.append(_group_node(graph, gi, label, positions))
        _claim(graph.tape, nodes[-1], owner, producer)
    edges = _edges(graph, owner, producer, per_gate, nodes)
    for j, (node, v) in enumerate(graph.outputs):
        key, name = f"out{j}", "f" if len(graph.outputs) == 1 else f"f{j}"
        nodes.append(Node(key, name, "output", name, "output", (), v, jnp.ones_like(v)))
        edges[(producer[node], key, node)] = Edge(producer[node], key, v, jnp.ones_like(v))
    return nodes, list(edges.values())


def _input_node(graph: Graph, node: int, name: str) -> Node:
    """The node of the boxed input leaf `node`, named `name`."""
    return Node(
        f"i{node}",
        name,
        "input",
        name,
        "input",
        (),
        graph.input_values[node],
        graph.grads.get(node),
    )


def _group_node(graph: Graph, gi: int, label, positions: list) -> Node:
    """The node of the records at tape `positions`, group `gi`: one gate (`label` None) or a
    layer named `label`; its value and gradient are those of its last record's first output."""
    recs = [graph.tape.records[p] for p in positions]
    gates = ", ".join(dict.fromkeys(gate_name(r) for r in recs))
    if label is None:  # one gate
        key, name, kind = f"g{positions[0]}", f"#{positions[0]}", "gate"
        label = gate_label(recs[0])
        op = gates if label == gates else f"{gates} {label}"
    else:  # one layer
        key, name, kind, op = f"L{gi}", label, "layer", gates
        label = f"{label}\n{gates}" if len(gates) <= 40 else label
    last = recs[-1]
    out_id = next((i for i in last.out_ids if i is not None), None)
    return Node(
        key,
        label,
        kind,
        name,
        op,
        tuple(positions),
        last.outs[0],
        graph.grads.get(out_id),
        " ".join(dict.fromkeys(r.site for r in recs)),
    )


def _claim(tape, node: Node, owner: dict, producer: dict) -> None:
    """Mark the records of `node` as drawn by it (`owner`: tape position -> node key) and their
    outputs as coming from it (`producer`: value node -> node key)."""
    for p in node.records:
        owner[p] = node.key
        for i in tape.records[p].out_ids:
            if i is not None:
                producer[i] = node.key


def _edges(graph: Graph, owner: dict, producer: dict, per_gate: bool, nodes: list) -> dict:
    """(source, destination, value node) -> Edge for each value a record takes from another
    node, the gradients it sent back along it added up. Per gate, a constant array input gets a
    node (appended to `nodes`) and an edge of its own."""
    edges = {}
    for pos, rec in enumerate(graph.tape.records):
        dst = owner.get(pos)
        for k, j, p, x in input_leaves(rec):
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
    return edges
