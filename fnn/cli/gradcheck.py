"""`python -m fnn gradcheck`: every gate's hand-written VJP checked at its test cases, one table.

    python -m fnn gradcheck                        # every gate, every JAX-primitive rule, the
                                                   # rule library (fnn.rulebook)
    python -m fnn gradcheck --module mypkg.gates   # plus the Gate objects found in mypkg.gates
    python -m fnn gradcheck --gate relu,conv2d --format markdown
    python -m fnn gradcheck --model resnet         # a model's gradients per layer (check_grads)

Per gate (fnn.registry, then the rules of JAX's primitives, fnn.ops.primitives, named 'lax.*'):
the largest relative error of the VJP vs jax.vjp of the same forward (float64 and float32) and
vs central differences (float64) over its test cases, and vs jax.vjp at its kink cases
(Gate.defkinks: a disagreement with JAX at a kink fails), the JAX transforms it passed, and its
second order: JAX differentiating the hand-written backward against JAX's own second derivative
(fnn.check.gates); forward + VJP time under jit, custom vs built-in, on the gate's largest
float32 test case, in microseconds (fnn.bench.time_gate). Then the rule library: each
surrogate rule against its declared formula, and its distance from the exact gradient
(fnn.check.rules). The exit status is 1 when anything (or the model) fails.
"""

from __future__ import annotations

import dataclasses
import importlib
import json

import jax
import numpy as np

from fnn.autodiff import collect_gates
from fnn.bench.timing import time_gate
from fnn.check.gates import SECOND_ORDER, TRANSFORMS, cast_case, check_gate
from fnn.check.rules import check_library
from fnn.check.tolerances import TOLERANCES, tolerance
from fnn.check.zoo import MODELS, check_model
from fnn.ops import registry
from fnn.ops.primitives import registry as primitive_registry

HEADER = ("gate", "cases", "vs jax f64", "vs jax f32", "vs numeric", "2nd order", "custom us",
          "built-in us", "transforms", "verdict")
RULE_HEADER = ("rule", "gate", "kind", "vs its formula", "cos with exact", "~exact", "verdict")


HELP = "check every gate's VJP (or a model's gradients) against JAX and numerics"
DESCRIPTION = ("Check each gate's hand-written VJP at its test cases against jax.vjp and float64 "
               "central differences, under jit/vmap/grad; exit 1 on any failure.")


def add_arguments(parser) -> None:
    parser.add_argument("--module", action="append", default=[], metavar="PKG.MOD",
                        help="also check the gates (fnn.defgate objects) defined in this module")
    parser.add_argument("--gate", action="append", default=[], metavar="NAME[,NAME]",
                        help="check only these gates")
    parser.add_argument("--model", choices=tuple(MODELS),
                        help="check a small model's gradients per layer instead of the gates")
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-timing", action="store_true", help="skip the jit timings")
    parser.add_argument("--no-primitives", action="store_true",
                        help="skip the rules of JAX's primitives (the 'lax.*' gates)")
    parser.add_argument("--no-rules", action="store_true",
                        help="skip the rule library (fnn.rulebook)")


def gates_to_check(modules=(), names=None, primitives: bool = True) -> dict:
    """name -> gate: fnn.registry (and the primitive rules, 'lax.*'), plus the gates of
    `modules` (import paths), filtered by names."""
    gates = dict(registry)
    if primitives or any(n.startswith("lax.") for n in names or ()):
        gates.update(primitive_registry)
    for modname in modules:
        for name, gate in collect_gates(importlib.import_module(modname)).items():
            if gates.get(name) is not gate:
                gates[name if name not in gates else f"{modname}.{name}"] = gate
    if names:
        unknown = [n for n in names if n not in gates]
        if unknown:
            raise ValueError(f"unknown gate(s) {unknown}; known: {', '.join(sorted(gates))}")
        gates = {n: gates[n] for n in names}
    return gates


def timing_us(gate, report, *, seed: int = 0, reps: int = 20):
    """(custom, built-in) microseconds of forward + VJP under jit on the gate's largest float32
    case; (None, None) for a gate the checker could not jit or run in float32."""
    if "jit" in report.errors or "float32" in report.errors or \
            not any(c.dtype == "float32" for c in report.cases):
        return None, None
    case = max(gate.cases(np.random.default_rng(seed), "float32"),
               key=lambda c: sum(np.size(a) for a in c.args))
    t = time_gate(gate, cast_case(case, "float32"), case.kwargs,
                  rng=np.random.default_rng(seed), reps=reps, fixed=case.fixed)
    return t["custom"] * 1e6, t["builtin"] * 1e6


def row(report, timing=(None, None)) -> dict:
    """The table's row of a GateCheck (what --format json lists per gate)."""
    return {"gate": report.gate, "cases": sum(c.dtype == "float64" for c in report.cases),
            "vs_jax_f64": report.worst("vs_jax", "float64"),
            "vs_jax_f32": report.worst("vs_jax", "float32"),
            "vs_numeric": report.worst("vs_numeric", "float64"),
            "second_order": report.transforms.get(SECOND_ORDER),
            "custom_us": timing[0], "builtin_us": timing[1],
            "transforms": {t: report.transforms.get(t) for t in TRANSFORMS},
            "verdict": report.verdict}


def _cells(r: dict) -> tuple:
    def e(v):
        return "-" if v is None else f"{v:.1e}"

    def us(v):
        return "-" if v is None else f"{v:.1f}"
    passed = " ".join(t for t in TRANSFORMS if r["transforms"].get(t)) or "-"
    second = {True: "ok", False: "FAIL", None: "-"}[r.get("second_order")]
    return (r["gate"], str(r["cases"]), e(r["vs_jax_f64"]), e(r["vs_jax_f32"]),
            e(r["vs_numeric"]), second, us(r["custom_us"]), us(r["builtin_us"]), passed,
            r["verdict"])


def rule_row(check) -> dict:
    """The rule table's row of a RuleCheck."""
    return {"rule": check.rule, "gate": check.gate, "kind": check.kind,
            "formula_error": check.formula_error, "cos": check.cos, "rel": check.rel,
            "verdict": check.verdict}


def _rule_cells(r: dict) -> tuple:
    e = lambda v: "-" if v is None else f"{v:.1e}"
    cos = "n/a" if r["cos"] != r["cos"] else f"{r['cos']:.3f}"  # nan: the exact gradient is 0
    return (r["rule"], r["gate"], r["kind"], e(r["formula_error"]), cos, f"{r['rel']:.2g}",
            r["verdict"])


def _table(header, cells) -> str:
    cells = [header] + cells
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def format_rows(rows: list[dict], fmt: str = "text", meta: dict | None = None,
                rules: list[dict] = ()) -> str:
    """The tables (gates, then the rule library) as text, Markdown or JSON, with a summary."""
    failed = [r["gate"] for r in rows if r["verdict"] != "ok"]
    failed += [r["rule"] for r in rules if not r["verdict"].startswith("ok")]
    summary = (f"{len(rows)} gates" + (f" and {len(rules)} rules" if rules else "")
               + f", {len(rows) + len(rules) - len(failed)} ok"
               + (f", FAILED: {', '.join(failed)}" if failed else ""))
    if fmt == "json":
        return json.dumps({"meta": meta or {}, "ok": not failed, "gates": rows,
                           "rules": list(rules)}, indent=2)
    tables = [(HEADER, [_cells(r) for r in rows])]
    if rules:
        tables.append((RULE_HEADER, [_rule_cells(r) for r in rules]))
    if fmt == "markdown":
        parts = []
        for header, cells in tables:
            lines = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |"
                     for r in [header] + cells]
            lines.insert(1, "|" + "---|" * len(header))
            parts.append("\n".join(lines))
        return "\n\n".join(parts) + f"\n\n{summary}\n"
    return "\n\n".join(_table(h, c) for h, c in tables) + f"\n{summary}"


def _check_model(args) -> int:
    report, divergences = check_model(args.model, seed=args.seed)
    if args.format == "json":
        print(json.dumps({"model": args.model, "report": report.to_dict(),
                          "divergences": [dataclasses.asdict(d) for d in divergences],
                          "ok": report.ok and divergences.ok}, indent=2))
    else:
        print(f"model {args.model}: parameter gradients, layer by layer")
        print(report.to_markdown() if args.format == "markdown" else report)
        print(divergences)
    return 0 if report.ok and divergences.ok else 1


def run(args) -> int:
    """Print the table; 0 when everything passed, 1 on any failure, 2 on a usage error."""
    if args.model:
        return _check_model(args)
    names = [n.strip() for item in args.gate for n in item.split(",") if n.strip()]
    try:
        gates = gates_to_check(args.module, names, primitives=not args.no_primitives)
    except (ImportError, ValueError) as e:
        print(f"fnn gradcheck: {e}")
        return 2
    rows = []
    for name, gate in gates.items():
        report = check_gate(name, gate, seed=args.seed)
        timing = (None, None) if args.no_timing else timing_us(gate, report, seed=args.seed)
        rows.append(row(report, timing))
    device = jax.devices()[0]
    meta = {"seed": args.seed, "device": f"{device.platform}:{device.device_kind}",
            "jax": jax.__version__, "tolerance": dict(TOLERANCES["gate"]),
            "numeric_tolerance": tolerance("numeric", "float64"),
            "transform_tolerance": tolerance("transform", "float64")}
    rules = [] if args.no_rules or names else [rule_row(c) for c in check_library(args.seed)]
    print(format_rows(rows, args.format, meta, rules))
    return 0 if all(r["verdict"] == "ok" for r in rows) and \
        all(r["verdict"].startswith("ok") for r in rules) else 1
