"""How a recorded graph (fnn.check.graph.Graph) is shown: DOT in the lecture's style, a text
table, one gate explained, and the lecture's number format ('-12', '0.73', 'f32[4,8] norm 2.1').
"""

from __future__ import annotations

import html
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from fnn.errors import describe

SYMBOLS = {
    "add": "+",
    "subtract": "-",
    "multiply": "*",
    "divide": "/",
    "power": "**",
    "matmul": "@",
    "negative": "*-1",
    "maximum": "max",
    "minimum": "min",
    "sigmoid": "σ",
}
COMMUTATIVE = {"add", "multiply", "maximum", "minimum"}


def to_dot(g) -> str:
    """Graphviz DOT in the lecture's style: the value above each edge (green), the gradient
    below (red)."""
    lines = [
        "digraph fnn {",
        "  rankdir=LR; nodesep=0.4; ranksep=0.9;",
        '  node [fontname="Helvetica"]; edge [fontname="Helvetica", fontsize=11];',
    ]
    if g.title:
        lines.append(f'  labelloc="t"; label="{_esc(g.title)}";')
    for n in g.nodes:
        style = {
            "input": "shape=plaintext, fontsize=14",
            "gate": 'shape=circle, style=filled, fillcolor="#eef3fb"',
            "layer": 'shape=box, style="rounded,filled", fillcolor="#eef3fb"',
            "const": "shape=box, style=dashed, color=gray50, fontcolor=gray40",
            "output": "shape=plaintext, fontsize=14",
        }[n.kind]
        tip = f', tooltip="{_esc(n.where)}"' if n.where else ""
        lines.append(f'  {n.key} [label="{_esc(n.label)}", {style}{tip}];')
    for e in g.edges:
        label = f'<font color="darkgreen">{html.escape(fmt(e.value))}</font>'
        if e.grad is not None:
            label += f'<br/><font color="red">{html.escape(fmt(e.grad))}</font>'
        lines.append(f"  {e.src} -> {e.dst} [label=<{label}>];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_text(g) -> str:
    """Every node with its op, inputs, value, gradient and call site, one per line."""
    rows = [("node", "op", "inputs", "value", "gradient", "at")]
    names = {n.key: n.name for n in g.nodes}
    incoming: dict = {}
    for e in g.edges:
        incoming.setdefault(e.dst, []).append(names[e.src])
    for n in g.nodes:
        if n.kind == "const":
            continue
        rows.append(
            (
                n.name,
                n.op,
                ", ".join(incoming.get(n.key, [])),
                fmt(n.value),
                fmt(n.grad),
                " ".join(os.path.basename(w) for w in n.where.split()),
            )
        )
    widths = [min(48, max(len(r[i]) for r in rows)) for i in range(6)]
    out = [g.title] if g.title else []
    for r in rows:
        out.append("  " + "  ".join(c[:w].ljust(w) for c, w in zip(r, widths)).rstrip())
    out.insert(2 if g.title else 1, "  " + "-" * (sum(widths) + 10))
    return "\n".join(out)


def explain(graph, gate) -> str:
    """One gate of `graph`: its upstream gradient, local gradient and their product, per input.

    `gate`: a tape position (int) or a gate name (its first application)."""
    pos = (
        gate
        if isinstance(gate, int)
        else next(
            (i for i, r in enumerate(graph.tape.records) if gate in (r.gate.name, gate_name(r))),
            None,
        )
    )
    if pos is None or not 0 <= pos < len(graph.tape.records):
        raise ValueError(
            f"no gate {gate!r} in this graph; gates: {[gate_name(r) for r in graph.tape.records]}"
        )
    rec, g, sent = graph.tape.records[pos], graph.upstream[pos], graph.sent[pos]
    lines = [f"gate #{pos} {gate_name(rec)} ({gate_label(rec)}) at {rec.site}"]
    rule = _local_rule(rec.gate)
    if rule:
        lines.append(f"  rule: {rule}")
    if g is None:
        return "\n".join(lines + ["  no gradient reaches this gate's output"])
    names = _names(graph)
    scalar = not rec.multi and all(np.size(x) == 1 for x in rec.inputs + rec.outs)
    lines.append(f"  upstream gradient  {fmt(g)}")
    if scalar:
        local = rec.pullback(jnp.ones_like(g))
    for k, j, p, x in input_leaves(rec):
        if p is None:
            continue
        who = f"input {k} ({names.get(p, '#?')} = {fmt(x)})"
        if scalar:
            lines.append(
                f"  {who}: local gradient {fmt(local[k])} x upstream {fmt(g)} = {fmt(sent[k])}"
            )
        else:
            lines.append(f"  {who}: VJP sends back {fmt(rec.leaf_grads(k, sent[k])[j])}")
    if not scalar:
        lines.append(
            "  (the local gradient is a Jacobian; the hand-written VJP multiplies "
            "the upstream gradient by it without forming it)"
        )
    return "\n".join(lines)


def _names(g) -> dict:
    """node -> its name in explanations: an input's name, '#3' for a gate's output."""
    names = dict(g.inputs)
    for pos, rec in enumerate(g.tape.records):
        for i in rec.out_ids:
            if i is not None:
                names[i] = f"#{pos}"
    return names


def input_leaves(rec) -> list:
    """(input position k, leaf index j, parent node or None, leaf value) per input leaf."""
    return [
        (k, j, p, x)
        for k, (ps, arg) in enumerate(zip(rec.parents, rec.inputs))
        for j, (p, x) in enumerate(zip(ps, jax.tree_util.tree_leaves(arg)))
    ]


def gate_name(rec) -> str:
    """The gate's name as the lecture calls it ('multiply' for JAX's mul primitive: the name its
    gate declares, `primitive_gate(..., lecture=)`)."""
    return getattr(rec.gate, "lecture", None) or rec.gate.name


def gate_label(rec) -> str:
    """The lecture's label of a gate: '+', '*-1', 'exp', '+1', '1/x', '**2'."""
    name = gate_name(rec)
    if rec.gate.name == "lax.integer_pow":
        return f"**{rec.static['y']}"
    sym = SYMBOLS.get(name, name)
    consts = [
        (k, x)
        for k, _, p, x in input_leaves(rec)
        if p is None and np.size(x) == 1 and len(rec.inputs) == 2
    ]
    if name in SYMBOLS and len(consts) == 1:
        k, c = consts[0]
        c = fmt(c)
        if k == 1 or name in COMMUTATIVE:
            return f"{sym}{c}" if len(sym) <= 2 else f"{sym}(·, {c})"
        return f"{c}{sym}x"
    return sym


def _local_rule(gate) -> str:
    doc = gate.__doc__ or ""
    m = re.search(r"Local gradients?\b.*?(?:\n\s*\n|$)", doc, re.S)
    text = " ".join((m.group(0) if m else doc.split("\n\n")[0]).split())
    if len(text) > 240:  # whole sentences only
        text = text[: text.rfind(". ", 0, 240) + 1] or text[:240]
    return text


def _num(x: float) -> str:
    """2 decimals from 1 up (-12, 1.37), 2 significant digits below (0.73, -0.53, 0.088)."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if 1 <= abs(x) < 1e4:
        return f"{x:.2f}".rstrip("0").rstrip(".")
    return f"{x:.2g}"


def fmt(v) -> str:
    """Lecture-style numbers: '-12', '0.73'; small arrays listed; larger ones by shape + norm."""
    if v is None:
        return ""
    if isinstance(v, (tuple, list)):  # the outputs of a multi-output gate
        return "(" + ", ".join(fmt(x) for x in v) + ")"
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
