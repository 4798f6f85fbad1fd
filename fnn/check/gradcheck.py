"""`python -m fnn gradcheck`: every gate's hand-written VJP checked at its test cases, one table.

    python -m fnn gradcheck                        # every gate in fnn.registry
    python -m fnn gradcheck --module mypkg.gates   # plus the Gate objects found in mypkg.gates
    python -m fnn gradcheck --gate relu,conv2d --format markdown
    python -m fnn gradcheck --model resnet         # a model's gradients per layer (check_grads)

Per gate: max relative error of the VJP vs jax.vjp of the same forward (float64 and float32),
vs central differences (float64); forward + VJP time under jit, custom vs built-in (float32,
the gate's largest test case, microseconds); the JAX transforms it passed, in float64 on its
first case, each compared with the same transform of jax.vjp:
    jit          jax.jit of fnn.vjp's pullback
    vmap         jax.vmap of fnn.vjp's pullback over a batch of inputs and cotangents
    grad(vmap)   jax.grad of a loss of that batched pullback (JAX differentiates the VJP)
    vmap(grad)   jax.vmap of fnn.grad of sum(out ** 2): per-example gradients
The exit status is 1 when any gate (or the model) fails.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff import collect_gates
from fnn.transforms import grad as fnn_grad
from fnn.transforms import vjp as fnn_vjp
from fnn.check.gates import NUMERIC_TOLERANCE, TOLERANCE, cast_case, gate_functions
from fnn.check.numeric import rel_error

TRANSFORMS = ("jit", "vmap", "grad(vmap)", "vmap(grad)")
TRANSFORM_TOLERANCE = 1e-8  # float64, fnn under a transform vs jax.vjp under the same transform
# the checking programs run once: compile them fast (2-3x) rather than well (timed ones are not)
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@dataclasses.dataclass
class GateRow:
    gate: str
    cases: int
    vs_jax_f64: float | None
    vs_jax_f32: float | None
    vs_numeric: float | None
    custom_us: float | None
    builtin_us: float | None
    transforms: dict  # name -> True / False (None: not applicable)
    verdict: str  # "ok" or "FAIL: reasons"

    @property
    def ok(self):
        return self.verdict == "ok"


def check_gate(name: str, gate, *, seed: int = 0, timing: bool = True) -> GateRow:
    """Run every test case of `gate`: errors vs jax.vjp and numerics, transforms, timing.

    Each dtype's checks are traced into one jitted program (one compile per gate and dtype,
    which is what keeps the whole registry fast); a gate that cannot be jitted is checked
    eagerly instead, and fails the jit transform.
    """
    problems, row = [], GateRow(name, 0, None, None, None, None, None, {}, "ok")
    try:
        with jax.enable_x64(True):
            cases = gate.cases(np.random.default_rng(seed), "float64")
            row.cases = len(cases)
            if cases:
                errs, row.transforms = _check_cases(gate, cases, "float64", seed, True)
                row.vs_jax_f64, row.vs_numeric, out_err = errs
                if out_err > 1e-12:
                    problems.append(f"forward differs from fnn's recorded call ({out_err:.1e})")
        cases32 = gate.cases(np.random.default_rng(seed), "float32")
        if cases32:
            row.vs_jax_f32 = _check_cases(gate, cases32, "float32", seed, False)[0][0]
        if timing and cases32:
            try:
                row.custom_us, row.builtin_us = _timing(gate, cases32, seed)
            except Exception:  # not jittable: no timing (the jit transform says why)
                pass
    except Exception as e:  # a gate that crashes the checker fails, with the reason shown
        problems.append(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}")
    if not row.cases and not problems:
        problems.append("no test cases")
    for value, tol, what in ((row.vs_jax_f64, TOLERANCE["float64"], "vs jax.vjp f64"),
                             (row.vs_jax_f32, TOLERANCE["float32"], "vs jax.vjp f32"),
                             (row.vs_numeric, NUMERIC_TOLERANCE, "vs numeric")):
        if value is not None and not value <= tol:
            problems.append(f"{what} {value:.1e} > {tol:g}")
    if row.vs_jax_f64 is not None and row.vs_jax_f64 > TOLERANCE["float64"]:
        row.transforms = {t: None for t in TRANSFORMS}  # a wrong VJP is wrong under all of them
    problems += [f"{t} failed" for t in TRANSFORMS if row.transforms.get(t) is False]
    row.verdict = "ok" if not problems else "FAIL: " + "; ".join(problems)
    return row


class _Prepared:
    """One test case in one dtype: the gate's forward and its fnn-recorded twin as functions of
    the float inputs `d`, and the float parts `cf` of a random cotangent (float0 for others)."""

    def __init__(self, gate, case, dtype, rng):
        args = cast_case(case, dtype)
        _, self.forward, self.recorded = gate_functions(gate, args, case.kwargs)
        self.d = [a for a in args if jnp.issubdtype(jnp.result_type(a), jnp.inexact)]
        self.numeric = case.numeric
        out = jax.eval_shape(self.forward, *self.d)
        self.multi = isinstance(out, tuple)
        outs = out if self.multi else (out,)
        self.parts = [o if jnp.issubdtype(o.dtype, jnp.inexact)
                      else np.zeros(o.shape, jax.dtypes.float0) for o in outs]
        self.cf = [jnp.asarray(rng.standard_normal(o.shape), o.dtype) for o in self.parts
                   if not isinstance(o, np.ndarray)]

    def ct(self, cf):
        it = iter(cf)
        full = [o if isinstance(o, np.ndarray) else next(it) for o in self.parts]
        return tuple(full) if self.multi else full[0]

    def mine(self, cf, *d):
        return fnn_vjp(self.recorded, *d)[1](self.ct(cf))

    def ref(self, cf, *d):
        return jax.vjp(self.forward, *d)[1](self.ct(cf))


def _check_cases(gate, cases, dtype, seed, full):
    """((max vs jax, max vs numeric or None, max forward mismatch), transforms) over `cases`."""
    rng = np.random.default_rng(seed + 1)
    preps = [_Prepared(gate, c, dtype, rng) for c in cases]

    failed = set()  # transforms that raised (while tracing, or eagerly)

    def run(ds, cfs, jitted):
        res = []
        for p, d, cf in zip(preps, ds, cfs):
            out_ref = p.forward(*d)
            out_mine, pullback = fnn_vjp(p.recorded, *d)
            num = _numeric_vjp(p, d, cf) if full and p.numeric else None
            res.append((out_ref, out_mine, p.ref(cf, *d), pullback(p.ct(cf)), num))
        trans = _transforms(preps[0], ds[0], cfs[0], jitted, failed) if full else {}
        return res, trans

    args = ([p.d for p in preps], [p.cf for p in preps])
    options = FAST_COMPILE if jax.default_backend() == "cpu" else None
    try:
        res, trans = jax.jit(lambda ds, cfs: run(ds, cfs, True), compiler_options=options)(*args)
    except Exception:  # not jittable: check eagerly (the jit transform then fails on its own)
        failed.clear()
        res, trans = run(*args, False)
    vs_jax = max(_max_rel(mine, ref) for _, _, ref, mine, _ in res)
    nums = [_max_rel(num, mine) for _, _, _, mine, num in res if num is not None]
    out_err = max(_max_rel(a, b) for a, b, _, _, _ in res)
    passed = {k: (False if k in failed else None if trans[k] is None else _close(*trans[k]))
              for k in TRANSFORMS if k in trans}
    return (vs_jax, max(nums) if nums else None, out_err), passed


def _max_rel(a, b) -> float:
    la = [x for x in jax.tree_util.tree_leaves(a) if x.dtype != jax.dtypes.float0]
    lb = [x for x in jax.tree_util.tree_leaves(b) if x.dtype != jax.dtypes.float0]
    if len(la) != len(lb):
        return float("inf")
    return max((rel_error(x, y) for x, y in zip(la, lb)), default=0.0)


def _numeric_vjp(p, d, cf, h=1e-6):
    """Central differences of sum(forward * ct) wrt each float input, every element at once."""
    cts = p.ct(cf)
    cts = cts if p.multi else (cts,)

    def scalar(*dd):
        out = p.forward(*dd)
        return sum(jnp.sum(o * c) for o, c in zip(out if p.multi else (out,), cts)
                   if c.dtype != jax.dtypes.float0)

    grads = []
    for i, x in enumerate(d):
        steps = h * jnp.eye(x.size, dtype=x.dtype).reshape((x.size,) + x.shape)

        def at(delta, i=i):
            return scalar(*[v + delta if j == i else v for j, v in enumerate(d)])

        diff = jax.vmap(at)(steps) - jax.vmap(at)(-steps) if x.size else jnp.zeros(0, x.dtype)
        grads.append((diff / (2 * h)).reshape(x.shape))
    return tuple(grads)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _transforms(p, d, cf, jitted, failed: set) -> dict:
    """name -> (fnn's result, jax.vjp's result) under each transform; None (and the name added
    to `failed`) where it raised, None alone where it does not apply (no float input).

    Called while tracing the jitted check (jitted=True: the jit transform is the enclosing
    jit) or eagerly; a transform that raises while tracing is caught here, on its own."""
    if not d:
        return {t: None for t in TRANSFORMS}
    stack = [jnp.stack([x, 0.5 * x]) for x in d]
    cfs = [jnp.stack([c, -c]) for c in cf]
    argnums = tuple(range(len(d)))

    def loss_mine(*d):
        from fnn import ops
        return ops.sum(_first(p.recorded(*d)) ** 2)

    def loss_ref(*d):
        return jnp.sum(_first(p.forward(*d)) ** 2)

    def grad_of_vmap(fn):
        def total(*d):
            return sum(jnp.sum(o ** 2) for o in jax.tree_util.tree_leaves(jax.vmap(fn)(cfs, *d)))
        return jax.grad(total, argnums=argnums)(*stack)

    checks = {
        "jit": lambda: ((p.mine if jitted else jax.jit(p.mine))(cf, *d), p.ref(cf, *d)),
        "vmap": lambda: (jax.vmap(p.mine)(cfs, *stack), jax.vmap(p.ref)(cfs, *stack)),
        "grad(vmap)": lambda: (grad_of_vmap(p.mine), grad_of_vmap(p.ref)),
        "vmap(grad)": lambda: (jax.vmap(fnn_grad(loss_mine, argnums=argnums))(*stack),
                               jax.vmap(jax.grad(loss_ref, argnums=argnums))(*stack)),
    }
    result = {}
    for name, check in checks.items():
        try:
            result[name] = check()
        except Exception:
            result[name] = None
            failed.add(name)
    return result


def _close(a, b) -> bool:
    return _max_rel(a, b) <= TRANSFORM_TOLERANCE


def _timing(gate, cases, seed, calls: int = 20, repeats: int = 3):
    """Microseconds per forward + VJP under jit, (custom, built-in), on the largest case."""
    case = max(cases, key=lambda c: sum(np.size(a) for a in c.args))
    p = _Prepared(gate, case, "float32", np.random.default_rng(seed))
    times = []
    for fn in (jax.jit(p.mine), jax.jit(p.ref)):
        jax.block_until_ready(fn(p.cf, *p.d))
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                out = fn(p.cf, *p.d)
            jax.block_until_ready(out)
            best = min(best, (time.perf_counter() - t0) / calls)
        times.append(best * 1e6)
    return tuple(times)


def gates_to_check(modules=(), names=None) -> dict:
    """name -> gate: fnn.registry plus the gates of `modules` (import paths), filtered by names."""
    import fnn

    gates = dict(fnn.registry)
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


def run_gradcheck(gates: dict, *, seed: int = 0, timing: bool = True) -> list[GateRow]:
    return [check_gate(name, gate, seed=seed, timing=timing) for name, gate in gates.items()]


# -- output ---------------------------------------------------------------------------------------
HEADER = ("gate", "cases", "vs jax f64", "vs jax f32", "vs numeric", "custom us", "built-in us",
          "transforms", "verdict")


def _cells(r: GateRow) -> tuple:
    def e(v):
        return "-" if v is None else f"{v:.1e}"

    def us(v):
        return "-" if v is None else f"{v:.1f}"
    passed = " ".join(t for t in TRANSFORMS if r.transforms.get(t)) or "-"
    return (r.gate, str(r.cases), e(r.vs_jax_f64), e(r.vs_jax_f32), e(r.vs_numeric),
            us(r.custom_us), us(r.builtin_us), passed, r.verdict)


def format_rows(rows: list[GateRow], fmt: str = "text", meta: dict | None = None) -> str:
    failed = [r.gate for r in rows if not r.ok]
    summary = (f"{len(rows)} gates, {len(rows) - len(failed)} ok"
               + (f", FAILED: {', '.join(failed)}" if failed else ""))
    if fmt == "json":
        return json.dumps({"meta": meta or {}, "ok": not failed,
                           "gates": [dataclasses.asdict(r) for r in rows]}, indent=2)
    cells = [HEADER] + [_cells(r) for r in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(c) + " |" for c in cells]
        lines.insert(1, "|" + "---|" * len(HEADER))
        return "\n".join(lines) + f"\n\n{summary}\n"
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines) + f"\n{summary}"


# -- models ----------------------------------------------------------------------------------------
def small_model(name: str, seed: int = 0):
    """(model, params, state, x, y): a small fnn.nn model by name with a batch, in float32."""
    from fnn import nn

    builders = {"mlp": (lambda: nn.mlp(hidden=(16, 16), num_classes=5), (12,), 8),
                "cnn": (lambda: nn.cnn(channels=(4, 8), dense=(16,), num_classes=5), (8, 8, 3), 4),
                "resnet": (lambda: nn.resnet(widths=(4, 8), num_classes=5), (8, 8, 3), 4)}
    if name not in builders:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(builders)}")
    build, shape, batch = builders[name]
    model = build()
    kp, kx, ky = jax.random.split(jax.random.PRNGKey(seed), 3)
    params, state, _ = model.init(kp, shape)
    x = jax.random.normal(kx, (batch,) + shape, jnp.float32)
    y = jax.random.randint(ky, (batch,), 0, 5)
    return model, params, state, x, y


def check_model(name: str, *, seed: int = 0):
    """check_grads of a small model's loss wrt its parameters (one row per layer's leaf), and
    locate_divergence of the same loss: (GradReport, Divergences)."""
    from fnn import ops
    from fnn.check.divergence import locate_divergence
    from fnn.check.report import check_grads

    model, params, state, x, y = small_model(name, seed)

    def loss(params, x):
        return ops.softmax_cross_entropy(model.apply(params, state, x, train=True)[0], y)

    return check_grads(loss, params, x, seed=seed), locate_divergence(loss, params, x)


# -- command line ---------------------------------------------------------------------------------
def add_gradcheck_arguments(parser) -> None:
    parser.add_argument("--module", action="append", default=[], metavar="PKG.MOD",
                        help="also check the gates (fnn.defgate objects) defined in this module")
    parser.add_argument("--gate", action="append", default=[], metavar="NAME[,NAME]",
                        help="check only these gates")
    parser.add_argument("--model", choices=("mlp", "cnn", "resnet"),
                        help="check a small model's gradients per layer instead of the gates")
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-timing", action="store_true", help="skip the jit timings")


def gradcheck_main(args) -> int:
    """Print the table; 0 when everything passed, 1 on any failure, 2 on a usage error."""
    device = jax.devices()[0]
    meta = {"seed": args.seed, "device": f"{device.platform}:{device.device_kind}",
            "jax": jax.__version__, "tolerance": dict(TOLERANCE),
            "numeric_tolerance": NUMERIC_TOLERANCE, "transform_tolerance": TRANSFORM_TOLERANCE}
    if args.model:
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
    names = [n.strip() for item in args.gate for n in item.split(",") if n.strip()]
    try:
        gates = gates_to_check(args.module, names)
    except (ImportError, ValueError) as e:
        print(f"fnn gradcheck: {e}")
        return 2
    rows = run_gradcheck(gates, seed=args.seed, timing=not args.no_timing)
    print(format_rows(rows, args.format, meta))
    return 0 if all(r.ok for r in rows) else 1
