"""`python -m fnn gradcheck`: every gate's hand-written VJP checked at its test cases, one table,
printed row by row as each gate is checked.

    python -m fnn gradcheck                        # every gate, every JAX-primitive rule, the
                                                   # rule library (fnn.rulebook): under a minute
    python -m fnn gradcheck --all --timing         # every case, dtype and transform, timed
    python -m fnn gradcheck --module mypkg.gates   # plus the Gate objects found in mypkg.gates
    python -m fnn gradcheck --gate relu,conv2d --format markdown
    python -m fnn gradcheck --model resnet         # a model's gradients per layer (check_grads)

Per gate (fnn.registry, then the rules of JAX's primitives, fnn.ops.primitives, named 'lax.*'):
the largest relative error of the VJP vs jax.vjp of the same forward (float64, and float32 with
--all) and vs central differences (float64) over its test cases, and vs jax.vjp at its kink
cases (Gate.defkinks: a disagreement with JAX at a kink fails), the JAX transforms it passed,
and with --all its second order: JAX differentiating the hand-written backward against JAX's
own second derivative (fnn.check.gates). Without --all, each gate's first test case and its
kink cases, in float64, under jit (fnn.check.gates.QUICK): every gate is checked, in
a fraction of the time; the summary says how many cases ran. --timing: forward + VJP time
under jit, custom vs built-in, on the gate's largest float32 test case, in microseconds
(fnn.bench.time_gate). Then the rule library: each surrogate rule against its declared formula,
and its distance from the exact gradient (fnn.check.rules). Each check runs while the main
thread waits for Ctrl-C (fnn.cli._progress), which stops it within a second, the rows done so
far printed. Exit status (fnn.cli._exit): 0 all passed, 1 anything (or the model) failed, 2 a
bad --gate or --module, 130 (143) stopped by Ctrl-C (SIGTERM).
"""

from __future__ import annotations

import functools
import dataclasses
import importlib
import io
import json
import signal
import sys

import jax
import numpy as np

from fnn.autodiff import collect_gates
from fnn.bench.timing import time_gate
from fnn.check.gates import CHECKS, DTYPES, QUICK, SECOND_ORDER, TRANSFORMS, cast_case, check_gate
from fnn.check.rules import check_rule, library_cases
from fnn.cli._args import UsageError
from fnn.cli._exit import FAILED, INTERRUPTED, OK, TERMINATED
from fnn.cli._progress import Progress, Stopped, paint
from fnn.check.tolerances import TOLERANCES, tolerance
from fnn.check.zoo import MODELS, check_model
from fnn.ops import registry

HELP = "check every gate's VJP (or a model's gradients) against JAX and numerics"
DESCRIPTION = (
    "Check each gate's hand-written VJP at its test cases against jax.vjp and float64 "
    "central differences, under jit/vmap/grad; exit 1 on any failure."
)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        metavar="PKG.MOD",
        help="also check the gates (fnn.defgate objects) defined in this module",
    )
    parser.add_argument(
        "--gate", action="append", default=[], metavar="NAME[,NAME]", help="check only these gates"
    )
    parser.add_argument(
        "--model",
        choices=tuple(MODELS),
        help="check a small model's gradients per layer instead of the gates",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="every test case of each gate, in float32 too, under every "
        "transform (eager, jit, vmap, grad(vmap), vmap(grad)) and 2nd order; "
        "without it: each gate's first case and its kink cases, in float64, "
        "under jit (a few times faster)",
    )
    parser.add_argument(
        "--timing",
        action="store_true",
        help="time forward + VJP of each gate, custom vs built-in (columns "
        "'custom us', 'built-in us')",
    )
    parser.add_argument(
        "--format",
        choices=("text", "markdown", "json"),
        default="text",
        help="text: the table row by row as each gate is checked; markdown, "
        "json: the rows on stderr as they come, the document on stdout at the "
        "end (default text)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-primitives",
        action="store_true",
        help="skip the rules of JAX's primitives (the 'lax.*' gates)",
    )
    parser.add_argument(
        "--no-rules", action="store_true", help="skip the rule library (fnn.rulebook)"
    )


def gates_to_check(modules=(), names=None, primitives: bool = True) -> dict:
    """name -> gate: fnn.registry (without primitives=False only fnn's own gates, not the
    primitive rules 'lax.*'), plus the gates of `modules` (import paths), filtered by names (a
    lecture's name stands for its primitive's gate ('matmul' for lax.dot_general), or gates,
    each listed as 'add:lax.add', 'add:lax.add_any')."""
    asked = {}
    for n in names or ():
        found = registry.lecture_names.get(n, (n,))
        asked.update({n if len(found) == 1 else f"{n}:{g}": g for g in found})
    names = list(asked.values()) if names else names
    wanted = primitives or any(n.startswith("lax.") for n in names or ())
    gates = dict(registry if wanted else registry.named)
    for modname in modules:
        for name, gate in collect_gates(importlib.import_module(modname)).items():
            if gates.get(name) is not gate:
                gates[name if name not in gates else f"{modname}.{name}"] = gate
    if names:
        unknown = [n for n in names if n not in gates]
        if unknown:
            raise ValueError(f"unknown gate(s) {unknown}; known: {', '.join(sorted(gates))}")
        gates = {label: gates[n] for label, n in asked.items()}
    return gates


def timing_us(gate, report, *, seed: int = 0, reps: int = 20):
    """(custom, built-in) microseconds of forward + VJP under jit on the gate's largest float32
    case; (None, None) for a gate the checker could not jit, that has no float32 case, or whose
    float32 run raises (what --all reports as a failure)."""
    if (
        "jit" in report.errors
        or "float32" in report.errors
        or report.transforms.get("jit") is False
    ):
        return None, None
    try:
        cases = gate.cases(np.random.default_rng(seed), "float32")
        if not cases:
            return None, None
        case = max(cases, key=lambda c: sum(np.size(a) for a in c.args))
        t = time_gate(
            gate,
            cast_case(case, "float32"),
            case.kwargs,
            rng=np.random.default_rng(seed),
            reps=reps,
            fixed=case.fixed,
        )
    except Exception:  # not a check: --all checks float32 and says why
        return None, None
    return t["custom"] * 1e6, t["builtin"] * 1e6


def row(report, timing=(None, None)) -> dict:
    """The table's row of a GateCheck (what --format json lists per gate): `cases` the float64
    cases checked, `declared` those the gate has (kink cases included in both)."""
    return {
        "gate": report.gate,
        "cases": sum(c.dtype == "float64" for c in report.cases),
        "declared": report.declared,
        "vs_jax_f64": report.worst("vs_jax", "float64"),
        "vs_jax_f32": report.worst("vs_jax", "float32"),
        "vs_numeric": report.worst("vs_numeric", "float64"),
        "second_order": report.transforms.get(SECOND_ORDER),
        "custom_us": timing[0],
        "builtin_us": timing[1],
        "transforms": {t: report.transforms.get(t) for t in CHECKS if t != SECOND_ORDER},
        "verdict": report.verdict,
    }


def _e(v) -> str:
    return "-" if v is None else f"{v:.1e}"


def _us(v) -> str:
    return "-" if v is None else f"{v:.1f}"


CELLS = {  # header -> the cell of a row (a dict of `row`)
    "gate": lambda r: r["gate"],
    "cases": lambda r: (
        str(r["cases"])
        if r["cases"] == r.get("declared", r["cases"])
        else f"{r['cases']}/{r['declared']}"
    ),
    "vs jax f64": lambda r: _e(r["vs_jax_f64"]),
    "vs jax f32": lambda r: _e(r["vs_jax_f32"]),
    "vs numeric": lambda r: _e(r["vs_numeric"]),
    "2nd order": lambda r: {True: "ok", False: "FAIL", None: "-"}[r.get("second_order")],
    "custom us": lambda r: _us(r["custom_us"]),
    "built-in us": lambda r: _us(r["builtin_us"]),
    "transforms": lambda r: " ".join(t for t in CHECKS if r["transforms"].get(t)) or "-",
    "verdict": lambda r: r["verdict"],
}
HEADER = tuple(CELLS)
RULE_HEADER = ("rule", "gate", "kind", "vs its formula", "cos with exact", "~exact", "verdict")


def columns(everything: bool = True, timing: bool = True) -> tuple:
    """The headers of the gate table: those of what was checked (--all: float32 and the 2nd
    order; --timing: the timings)."""
    return tuple(
        h
        for h in HEADER
        if (everything or h not in ("vs jax f32", "2nd order"))
        and (timing or h not in ("custom us", "built-in us"))
    )


def _cells(r: dict, header=HEADER) -> tuple:
    return tuple(CELLS[h](r) for h in header)


def rule_row(check) -> dict:
    """The rule table's row of a RuleCheck."""
    return {
        "rule": check.rule,
        "gate": check.gate,
        "kind": check.kind,
        "formula_error": check.formula_error,
        "cos": check.cos,
        "rel": check.rel,
        "verdict": check.verdict,
    }


def _rule_cells(r: dict) -> tuple:
    cos = "n/a" if r["cos"] != r["cos"] else f"{r['cos']:.3f}"  # nan: the exact gradient is 0
    return (
        r["rule"],
        r["gate"],
        r["kind"],
        _e(r["formula_error"]),
        cos,
        f"{r['rel']:.2g}",
        r["verdict"],
    )


def _line(cells, widths, stream=None) -> str:
    """A row of the streamed table: cells padded to `widths`, the verdict (last) coloured
    where colour is wanted (fnn.cli._progress.paint)."""
    *first, verdict = cells
    text = "  ".join(c.ljust(w) for c, w in zip(first, widths))
    mark = "green" if verdict.startswith("ok") else "red"
    return (text + "  " + paint(verdict, mark, stream)).rstrip()


def _header_lines(header, widths) -> list[str]:
    text = "  ".join(h.ljust(w) for h, w in zip(header, widths + [0])).rstrip()
    return [text, "-" * len(text)]


def _table(header, cells) -> str:
    """A whole table, columns as wide as their widest cell (--format text after the fact)."""
    widths = [max(len(c[i]) for c in [header] + cells) for i in range(len(header) - 1)]
    return "\n".join(
        _header_lines(header, widths) + [_line(c, widths, io.StringIO()) for c in cells]
    )


def summary(rows: list[dict], rules: list[dict] = (), scope: dict | None = None) -> str:
    """'N gates and M rules, K ok[, FAILED: ...]', and what was left out when not everything
    was checked (scope: the run's meta)."""
    failed = [r["gate"] for r in rows if r["verdict"] != "ok"]
    failed += [r["rule"] for r in rules if not r["verdict"].startswith("ok")]
    text = (
        f"{len(rows)} gates"
        + (f" and {len(rules)} rules" if rules else "")
        + f", {len(rows) + len(rules) - len(failed)} ok"
        + (f", FAILED: {', '.join(failed)}" if failed else "")
    )
    if scope and not scope.get("all"):
        checked = sum(r["cases"] for r in rows)
        declared = sum(r["declared"] for r in rows)
        text += (
            f"\nchecked {checked} of the gates' {declared} test cases: each gate's first "
            "case and its kink cases, in float64, under jit;\n`python -m fnn gradcheck "
            "--all` checks every case, in float32 too, eager, under "
            f"{', '.join(t for t in TRANSFORMS if t != 'jit')} and 2nd order"
        )
    if scope and not scope.get("timing"):
        text += "; --timing times each gate, custom vs built-in"
    return text


def format_rows(
    rows: list[dict], fmt: str = "text", meta: dict | None = None, rules: list[dict] = ()
) -> str:
    """The tables (gates, then the rule library) as text, Markdown or JSON, with a summary
    (meta: the run's, as --format json writes it; its scope says what the text leaves out)."""
    meta = meta or {}
    header = columns(meta.get("all", True), meta.get("timing", True))
    if fmt == "json":
        failed = [r for r in rows if r["verdict"] != "ok"] + [
            r for r in rules if not r["verdict"].startswith("ok")
        ]
        return json.dumps(
            {
                "meta": meta,
                "ok": not failed and not meta.get("interrupted"),
                "gates": rows,
                "rules": list(rules),
            },
            indent=2,
        )
    tables = [(header, [_cells(r, header) for r in rows])]
    if rules:
        tables.append((RULE_HEADER, [_rule_cells(r) for r in rules]))
    text = summary(rows, rules, meta or None)
    if fmt == "markdown":
        parts = []
        for head, cells in tables:
            lines = [
                "| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in [head] + cells
            ]
            lines.insert(1, "|" + "---|" * len(head))
            parts.append("\n".join(lines))
        return "\n\n".join(parts) + f"\n\n{text}\n"
    return "\n\n".join(_table(h, c) for h, c in tables) + f"\n{text}"


def _check_model(args) -> int:
    with Progress(1, "gradcheck", unit="model") as progress:
        try:
            report, divergences = progress.run(
                args.model, lambda: check_model(args.model, seed=args.seed)
            )
        except Stopped as e:
            print(
                f"fnn gradcheck: interrupted by {signal.Signals(e.signum).name} while checking "
                f"{args.model}",
                file=sys.stderr,
            )
            return TERMINATED if e.signum == signal.SIGTERM else INTERRUPTED
    if args.format == "json":
        print(
            json.dumps(
                {
                    "model": args.model,
                    "report": report.to_dict(),
                    "divergences": [dataclasses.asdict(d) for d in divergences],
                    "ok": report.ok and divergences.ok,
                },
                indent=2,
            )
        )
    else:
        print(f"model {args.model}: parameter gradients, layer by layer")
        print(report.to_markdown() if args.format == "markdown" else report)
        print(divergences)
    return OK if report.ok and divergences.ok else FAILED


def _check(name, gate, scope: dict, timing: bool, seed: int):
    report = check_gate(name, gate, seed=seed, **scope)
    return report, (timing_us(gate, report, seed=seed) if timing else (None, None))


def _meta(args, scope: dict) -> dict:
    """What the report says of its own run: seed, device, versions, the scope of the checks
    (`scope`: QUICK's part of check_gate's, or all of it) and the tolerances."""
    device = jax.devices()[0]
    return {
        "seed": args.seed,
        "device": f"{device.platform}:{device.device_kind}",
        "jax": jax.__version__,
        "all": args.all,
        "timing": args.timing,
        "scope": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in {"dtypes": DTYPES, "cases": None, "checks": CHECKS, **scope}.items()
        },
        "tolerance": dict(TOLERANCES["gate"]),
        "numeric_tolerance": tolerance("numeric", "float64"),
        "transform_tolerance": tolerance("transform", "float64"),
    }


def _widths(header, gates, library, checks) -> tuple[list[int], list[int]]:
    """The column widths of the gates' rows (`header`'s but the last) and of the rules' rows,
    wide enough for the names and typical values: the rows are printed as they are checked,
    before all of them are known."""
    typical = {
        "gate": max(map(len, gates), default=0),
        "cases": 5,
        "transforms": len(" ".join(t for t in CHECKS if t != SECOND_ORDER and t in checks)),
    }
    widths = [max(len(h), typical.get(h, 0)) for h in header[:-1]]
    rule_widths = [
        max([len(RULE_HEADER[0])] + [len(r.name) for r, *_ in library]),
        max([len(RULE_HEADER[1])] + [len(g.name) for _, g, *_ in library]),
        max([len(RULE_HEADER[2])] + [len(r.kind) for r, *_ in library]),
    ] + [len(h) for h in RULE_HEADER[3:-1]]
    return widths, rule_widths


def run(args) -> int:
    """Check the gates and the rule library, printing each row as it is checked (to stdout for
    --format text, else to stderr, the document going to stdout at the end), a progress bar on
    a terminal. 0 when everything passed, 1 on any failure; 130 (143) when a Ctrl-C (SIGTERM)
    stopped it, the rows checked so far printed."""
    if args.model:
        return _check_model(args)
    names = [n.strip() for item in args.gate for n in item.split(",") if n.strip()]
    try:
        gates = gates_to_check(args.module, names, primitives=not args.no_primitives)
    except (ImportError, ValueError) as e:
        raise UsageError(str(e)) from None
    scope = {} if args.all else QUICK
    library = [] if args.no_rules or names else library_cases(args.seed)
    meta = _meta(args, scope)
    header = columns(args.all, args.timing)
    stream = sys.stdout if args.format == "text" else sys.stderr  # where the rows go as they come
    widths, rule_widths = _widths(header, gates, library, meta["scope"]["checks"])
    rows, rules, stopped = [], [], None
    with Progress(len(gates) + len(library), "gradcheck", unit="check") as progress:
        try:
            for line in _header_lines(header, widths):
                progress.write(line, stream)
            for name, gate in gates.items():
                report, timing = progress.run(
                    name,
                    lambda name=name, gate=gate: _check(name, gate, scope, args.timing, args.seed),
                )
                rows.append(row(report, timing))
                progress.write(_line(_cells(rows[-1], header), widths, stream), stream)
            if library:
                progress.write("", stream)
                for line in _header_lines(RULE_HEADER, rule_widths):
                    progress.write(line, stream)
            for rule, gate, inputs, static in library:
                check = progress.run(
                    rule.name,
                    functools.partial(check_rule, rule, gate, inputs, static, seed=args.seed),
                )
                rules.append(rule_row(check))
                progress.write(_line(_rule_cells(rules[-1]), rule_widths, stream), stream)
        except Stopped as e:
            stopped = e
    if stopped is not None:
        _say_stopped(stopped, meta, progress)
    if args.format == "text":
        print(summary(rows, rules, meta))
    else:
        print(format_rows(rows, args.format, meta, rules))
    return _exit_code(rows, rules, stopped)


def _say_stopped(stopped: Stopped, meta: dict, progress: Progress) -> None:
    """Record in `meta` which signal stopped the checks, and say on stderr how far they got."""
    meta["interrupted"] = signal.Signals(stopped.signum).name
    print(
        f"fnn gradcheck: interrupted by {meta['interrupted']} after {progress.done} of "
        f"{progress.total} checks; the rows above are those done",
        file=sys.stderr,
    )


def _exit_code(rows: list, rules: list, stopped: Stopped | None) -> int:
    """130 (143) when a Ctrl-C (SIGTERM) stopped the checks, else 0 when every gate's and rule's
    row passed, 1 otherwise."""
    if stopped is not None:
        return TERMINATED if stopped.signum == signal.SIGTERM else INTERRUPTED
    return (
        OK
        if all(r["verdict"] == "ok" for r in rows)
        and all(r["verdict"].startswith("ok") for r in rules)
        else FAILED
    )
