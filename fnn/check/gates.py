"""The gate checker: each test case of a gate, its hand-written VJP against jax.vjp of the same
forward and against central differences, eagerly and under JAX's transforms.

    report = check_gate("relu", fnn.registry["relu"])     # a GateCheck
    reports = check_gates(fnn.registry)                     # any mapping name -> Gate
    report.ok, report.problems, [(c.label, c.dtype, c.vs_jax) for c in report.cases]

Per test case, in float64 and in float32 (a CaseCheck each; tolerances from fnn.check.tolerances):
    forward     fnn's recorded call vs the gate's forward alone                  ("forward")
    vs_jax      the VJP vs jax.vjp of the forward, at the same random cotangent  ("gate")
    vs_numeric  the VJP vs central differences (float64, cases with numeric=True) ("numeric")
and per kink case (Gate.defkinks, float64, labelled 'kink: ...') forward and vs_jax alone, NaNs
and infinities required in the same places (rel_error(special=True)): at a kink fnn must give
JAX's value. A case whose inputs have a structure (Case.structure: symmetric, positive
definite, orthogonal, sorted) is perturbed within it, and both gradients are compared projected
onto it (fnn.check.numeric.project).
Per gate, in float64 on its first plain case (JAX has a rule, not a kink, no structure), fnn
against jax.vjp under the same transform ("transform"; none judged without such a case):
    eager        fnn.vjp's pullback called outside jit
    jit          jax.jit of fnn.vjp's pullback
    vmap         jax.vmap of fnn.vjp's pullback over a batch of inputs and cotangents
    grad(vmap)   jax.grad of a loss of that batched pullback (JAX differentiates the VJP)
    vmap(grad)   jax.vmap of fnn.grad of sum(out ** 2): per-example gradients
    2nd order    jax.grad of sum(sin(fnn.vjp's gradients)): JAX differentiating the hand-written
                 backward, against the same of jax.vjp (JAX's own second derivative)
(grad(vmap) and 2nd order differentiate the VJP: None, not judged, on a case that says JAX
cannot, Case.second_order=False.) Inputs a case holds fixed (Case.fixed) are not differentiated.

Each dtype's cases are traced into one jitted program: one compile per gate and dtype, which is
what keeps the whole registry fast. A gate that cannot be jitted is checked eagerly instead and
fails the jit transform. Whatever raises is a failure that keeps its reason (the exception's
type and message), in `GateCheck.errors`.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff import Gate, is_complex, is_float
from fnn.check.numeric import numerical_vjp, project, rel_error
from fnn.check.tolerances import tolerance
from fnn.transforms import grad as fnn_grad
from fnn.transforms import vjp as fnn_vjp

DTYPES = ("float64", "float32")
TRANSFORMS = ("jit", "vmap", "grad(vmap)", "vmap(grad)")
SECOND_ORDER = "2nd order"
CHECKS = ("eager",) + TRANSFORMS + (SECOND_ORDER,)  # what runs on the first float64 case
# a part that keeps every gate checked, a few times faster (`python -m fnn gradcheck` without
# --all): the first cases (_pick) and the kink cases, float64 (vs jax.vjp and central
# differences), under jit: the pullback called eagerly costs as much again, and float32,
# vmap, grad(vmap), vmap(grad) and the 2nd order several times that
QUICK = {"dtypes": ("float64",), "cases": 1, "checks": ("jit",)}
DIFFERENTIATE_THE_VJP = ("grad(vmap)", SECOND_ORDER)  # not judged where Case.second_order=False
# the checking programs run once: compile them fast rather than well (nothing here is timed)
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@dataclasses.dataclass
class CaseCheck:
    """One test case in one dtype: relative errors (see the module docstring)."""

    label: str
    dtype: str
    forward: float
    vs_jax: float | None  # None: JAX has no rule for this case (checked numerically alone)
    vs_numeric: float | None

    def problems(self) -> list[str]:
        found = []
        for what, value, kind in (
            ("forward", self.forward, "forward"),
            ("vs jax.vjp", self.vs_jax, "gate"),
            ("vs numeric", self.vs_numeric, "numeric"),
        ):
            tol = tolerance(kind, self.dtype)
            if value is not None and not value <= tol:
                found.append(
                    f"{what} {_short(self.dtype)} {value:.1e} > {tol:g} at case {self.label}"
                )
        return found


@dataclasses.dataclass
class GateCheck:
    """A gate's checks: one CaseCheck per case and dtype; the transforms (name -> True: agrees
    with jax.vjp, False: differs or raised, None: not applicable, or not judged because the VJP
    is already wrong); `errors`, where -> 'Type: message' of every exception met (where: a
    dtype or a transform), the whole message (the problems show its first line)."""

    gate: str
    cases: list
    transforms: dict
    errors: dict
    declared: int = 0  # the float64 cases the gate declares (kinks included), checked or not

    def worst(self, what: str, dtype: str) -> float | None:
        """The largest `what` ('forward', 'vs_jax', 'vs_numeric') over the cases in `dtype`."""
        values = [getattr(c, what) for c in self.cases if c.dtype == dtype]
        values = [v for v in values if v is not None]
        return max(values) if values else None

    @property
    def vjp_wrong(self) -> bool:
        worst = self.worst("vs_jax", "float64")
        return worst is not None and not worst <= tolerance("gate", "float64")

    @property
    def problems(self) -> list[str]:
        found = [
            f"{where}: {(why.splitlines() or [''])[0][:200]}" for where, why in self.errors.items()
        ]
        if not self.cases and not self.errors:
            found.append("no test cases")
        found += [p for c in self.cases for p in c.problems()]
        found += [
            f"{t} differs from jax.vjp"
            for t in CHECKS
            if self.transforms.get(t) is False and t not in self.errors
        ]
        return found

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        return "ok" if self.ok else "FAIL: " + "; ".join(self.problems)


def check_gates(gates: Mapping, *, seed: int = 0, kinks: bool = True, **scope) -> list[GateCheck]:
    """check_gate for every (name, gate) of `gates`.

    Args:
        gates: fnn.registry, or any mapping name -> Gate.
        seed: as for check_gate.
        kinks: as for check_gate.
        **scope: check_gate's dtypes=, cases=, checks=.

    Returns:
        A GateCheck per gate, in the mapping's order.

    Raises:
        ValueError: as for check_gate.
    """
    return [check_gate(name, gate, seed=seed, kinks=kinks, **scope) for name, gate in gates.items()]


def check_gate(
    name: str,
    gate,
    *,
    seed: int = 0,
    kinks: bool = True,
    dtypes=DTYPES,
    cases: int | None = None,
    checks=CHECKS,
) -> GateCheck:
    """Check every test case of `gate` (see fnn.check.gates): its VJP vs jax.vjp and numerics.

    Never raises for the gate's faults: they become problems of the returned GateCheck.

    A part of it (what `python -m fnn gradcheck` runs without --all, QUICK) is chosen with
    `dtypes`, `cases` and `checks`. GateCheck.declared counts the cases declared, checked or not.

    Args:
        name: the gate's name, for the report.
        gate: the Gate (with its cases declared by `@gate.defcases`).
        seed: the seed of the cases and cotangents.
        kinks: also check the gate's kink cases (Gate.defkinks) in float64, against jax.vjp
            alone (labels 'kink: ...').
        dtypes: those of DTYPES ("float64", "float32") to check in.
        cases: how many of the gate's test cases (the first ones, and the first checked
            numerically and the first plain one, the transforms' case, where those hold none);
            None: all; the kink cases are never left out.
        checks: those of CHECKS to run ("eager", "jit", "vmap", "grad(vmap)", "vmap(grad)",
            "2nd order"); the others stay None, not judged.

    Returns:
        The GateCheck of the gate.

    Raises:
        ValueError: a check or dtype is not one of CHECKS or DTYPES, or cases is below 1.
    """
    unknown = [t for t in checks if t not in CHECKS] + [d for d in dtypes if d not in DTYPES]
    if unknown or (cases is not None and cases < 1):
        raise ValueError(
            f"check_gate: checks must be among {CHECKS}, dtypes among {DTYPES} and "
            f"cases None or >= 1; got {unknown or cases!r}"
        )
    report = GateCheck(name, [], {t: None for t in CHECKS}, {})
    if gate.cases is None:
        report.errors["cases"] = f"none declared (@{name}.defcases)"
        return report
    for dtype in dtypes:
        try:
            with jax.enable_x64(dtype == "float64"):
                made = _cases_to_check(report, gate, dtype, seed, cases, kinks)
                if made:
                    _check_dtype(report, gate, made, dtype, seed, checks)
        except Exception as e:  # a gate that crashes the checker fails, with the reason shown
            report.errors[dtype] = _reason(e)
    if report.vjp_wrong:  # a wrong VJP is wrong under every transform: vs jax.vjp says it once
        report.transforms = {t: None for t in CHECKS}
    return report


def _cases_to_check(report: GateCheck, gate, dtype: str, seed: int, n: int | None, kinks: bool):
    """The test cases of `gate` to check in `dtype`: the first `n` (_pick), and in float64 the
    kink cases too (with `kinks`); in float64, report.declared counts every case declared."""
    made = list(gate.cases(np.random.default_rng(seed), dtype))
    if dtype == "float64":
        report.declared = len(made)
    made = _pick(made, n)
    if kinks and dtype == "float64" and callable(getattr(gate, "kinks", None)):
        kink_cases = gate.kink_cases(dtype)
        made += kink_cases
        report.declared += len(kink_cases)
    return made


COMPLEX_OF = {"float64": "complex128", "float32": "complex64"}


def _pick(cases: list, n: int | None) -> list:
    """The first n of `cases` (None: all), and the first case checked numerically and the
    first the transforms are checked on (`_Prepared.plain`) when those n hold none."""
    if n is None or n >= len(cases):
        return list(cases)
    chosen = list(range(n))
    for wanted in (
        lambda c: c.numeric or not getattr(c, "reference", True),
        lambda c: (
            getattr(c, "reference", True)
            and not any(
                s for s in (c.structure if isinstance(c.structure, tuple) else (c.structure,))
            )
        ),
    ):
        if not any(wanted(cases[i]) for i in chosen):
            chosen += [i for i, c in enumerate(cases) if wanted(c)][:1]
    return [cases[i] for i in sorted(chosen)]


def cast_case(case, dtype):
    """The case's positional args with float arrays cast to `dtype` and complex ones to its
    complex counterpart (float64: complex128; others untouched)."""
    return tuple(
        jnp.asarray(a, dtype=COMPLEX_OF.get(dtype, dtype) if is_complex(a) else dtype)
        if is_float(a)
        else a
        for a in case.args
    )


def random_cotangent(out, rng: np.random.Generator):
    """A standard-normal cotangent for `out` (arrays or ShapeDtypeStructs, or a tuple of them;
    a complex output's has standard-normal real and imaginary parts); float0 zeros for integer
    outputs, which take no cotangent."""

    def one(o):
        if not jnp.issubdtype(o.dtype, jnp.inexact):
            return np.zeros(np.shape(o), jax.dtypes.float0)
        value = rng.standard_normal(np.shape(o))
        if jnp.issubdtype(o.dtype, jnp.complexfloating):
            value = value + 1j * rng.standard_normal(np.shape(o))
        return jnp.asarray(value, dtype=o.dtype)

    return tuple(one(o) for o in out) if isinstance(out, tuple) else one(out)


def real_sum(x):
    """sum(x), of its real part where x is complex: a real scalar JAX can differentiate."""
    return jnp.sum(jnp.real(x) if jnp.iscomplexobj(x) else x)


def gate_functions(gate, args, kwargs, diff=None, fixed=()):
    """(diff, forward, recorded): the gate's forward alone and its fnn-recorded call, each a
    function of the arguments at positions `diff` (default: the float ones not in `fixed`,
    a Case's fixed inputs), the others fixed. `gate` may also be a plain function (one of
    fnn.ops.aliases): then both are that function (fnn differentiates its primitives)."""
    if diff is None:
        diff = [i for i, a in enumerate(args) if is_float(a) and i not in fixed]
    diff = list(diff)

    def merge(dargs):
        full = list(args)
        for i, d in zip(diff, dargs):
            full[i] = d
        return full

    def forward(*dargs):
        if not isinstance(gate, Gate):  # a function (fnn.ops.add): its primitives' rules
            return gate(*merge(dargs), **kwargs)
        if callable(gate.reference):
            return gate.reference(*merge(dargs), **kwargs)
        return gate.forward(*merge(dargs), **kwargs)[0]

    def recorded(*dargs):
        return gate(*merge(dargs), **kwargs)

    return diff, forward, recorded


class _Prepared:
    """One test case in one dtype: the gate's forward and its fnn-recorded twin as functions of
    the float inputs `d`, and a random cotangent `ct` (its float parts `cf` are traced)."""

    def __init__(self, gate, case, dtype, rng, label):
        args = cast_case(case, dtype)
        diff, self.forward, self.recorded = gate_functions(
            gate, args, case.kwargs, fixed=getattr(case, "fixed", ())
        )
        self.kink = getattr(case, "kink", False)  # compared with JAX alone, NaNs included
        self.label = f"kink: {label}" if self.kink else label
        self.numeric = case.numeric and not self.kink
        # JAX has no rule to compare with (case.reference False): central differences alone
        self.reference = getattr(case, "reference", True)
        # whether JAX can differentiate the VJP (Case.second_order)
        self.second_order = getattr(case, "second_order", True)
        self.d = [args[i] for i in diff]
        given = getattr(case, "structure", None)  # one entry per float input
        given = given if isinstance(given, tuple) else (given,)
        self.structure = tuple(given) + (None,) * (len(self.d) - len(given))
        out = jax.eval_shape(self.forward, *self.d)
        self.multi = isinstance(out, tuple)
        ct = random_cotangent(out, rng)
        self.parts = ct if self.multi else (ct,)
        self.cf = [c for c in self.parts if c.dtype != jax.dtypes.float0]

    def ct(self, cf):
        it = iter(cf)
        full = [c if c.dtype == jax.dtypes.float0 else next(it) for c in self.parts]
        return tuple(full) if self.multi else full[0]

    def mine(self, cf, *d):
        return fnn_vjp(self.recorded, *d)[1](self.ct(cf))

    def ref(self, cf, *d):
        if not self.reference:
            return None
        return jax.vjp(self.forward, *d)[1](self.ct(cf))

    def first(self, out):
        return out[0] if self.multi else out

    def project(self, grads, d):
        """Input gradients projected onto the inputs' structures (unchanged without any)."""
        if grads is None or not any(self.structure):
            return grads
        return [project(gr, x, kind) for gr, x, kind in zip(grads, d, self.structure)]

    @property
    def plain(self) -> bool:
        """Whether the transforms may be checked on this case: JAX has a rule for it, and it
        is neither a kink nor a structured input (whose gradients agree only projected)."""
        return self.reference and not self.kink and not any(self.structure)


def _check_dtype(report: GateCheck, gate, cases, dtype: str, seed: int, checks=CHECKS) -> None:
    """Add the CaseChecks of `cases` in `dtype`, and in float64 the transforms among `checks`,
    to `report`."""
    rng = np.random.default_rng(seed + 1)
    preps = [_Prepared(gate, c, dtype, rng, c.label or f"#{i}") for i, c in enumerate(cases)]
    full = dtype == "float64"
    first = next((i for i, p in enumerate(preps) if p.plain), None)  # the transforms' case
    if not checks:
        first = None
    raised = {}  # transform -> reason, for the transforms that raised

    def run(ds, cfs, jitted):
        return _run_cases(preps, ds, cfs, jitted, full, first, raised, checks)

    args = ([p.d for p in preps], [p.cf for p in preps])
    options = FAST_COMPILE if jax.default_backend() == "cpu" else None
    try:
        res, trans = jax.jit(lambda ds, cfs: run(ds, cfs, True), compiler_options=options)(*args)
    except Exception:
        # not jittable as one program: check eagerly. No reason is lost: what fails eagerly
        # raises to check_gate, and the jit transform, run on its own, keeps its own reason
        raised.clear()
        res, trans = run(*args, False)
    _add_case_checks(report, preps, res, dtype)
    if full and first is not None:
        _judge_transforms(report, preps[first], res[first][2], trans, raised, checks, dtype)


def _run_cases(preps: list, ds, cfs, jitted: bool, full: bool, first, raised: dict, checks):
    """What _check_dtype computes (in one jitted program where it can): per case, _case_results
    at its float inputs `ds` and cotangent parts `cfs`, and in float64 the transforms' (fnn,
    jax.vjp) pairs (_transforms) on the case `first` (None: no transforms)."""
    res = [_case_results(p, d, cf, full) for p, d, cf in zip(preps, ds, cfs)]
    # under the enclosing jit, the jit transform is the first plain case's own check
    same = (res[first][3], res[first][2]) if jitted and first is not None else None
    trans = (
        _transforms(preps[first], ds[first], cfs[first], jitted, raised, checks, same)
        if full and first is not None
        else {}
    )
    return res, trans


def _case_results(p: _Prepared, d, cf, full: bool) -> tuple:
    """(the forward's output, fnn's, jax.vjp's input gradients, fnn's, the central differences'
    or None) of one case, the gradients projected onto the inputs' structures; the differences
    in float64 only (`full`), for a case checked numerically or one JAX has no rule for."""
    out_mine, pullback = fnn_vjp(p.recorded, *d)
    num = (
        numerical_vjp(p.forward, d, p.ct(cf), structure=p.structure)
        if full and (p.numeric or not p.reference)
        else None
    )
    # the forward called on its own (jax.vjp's primal output can differ from it: at
    # lax.reduce's kinks it does)
    return (
        p.forward(*d),
        out_mine,
        p.project(p.ref(cf, *d), d),
        p.project(pullback(p.ct(cf)), d),
        num,
    )


def _add_case_checks(report: GateCheck, preps: list, res: list, dtype: str) -> None:
    """A CaseCheck per case to `report`: forward, vs jax.vjp and vs the central differences."""
    for p, (out_ref, out_mine, ref, mine, num) in zip(preps, res):
        report.cases.append(
            CaseCheck(
                p.label,
                dtype,
                _error(out_mine, out_ref, p.kink),
                None if ref is None else _error(mine, ref, p.kink),
                None if num is None else _error(num, mine),
            )
        )


def _judge_transforms(
    report: GateCheck, p: _Prepared, ref, trans: dict, raised: dict, checks, dtype: str
) -> None:
    """The verdict of each of `checks` to report.transforms, from the (fnn, jax.vjp) pairs
    `trans` on the transforms' case `p` and the eager check run here against `ref` (jax.vjp's
    gradients of `p`); False for a check that raised, whose reason goes to report.errors."""
    d, cf = p.d, p.cf
    if "eager" in checks:
        trans["eager"] = _attempt("eager", lambda: (p.mine(cf, *d), ref), raised)
    for name in checks:
        pair = trans.get(name)
        report.transforms[name] = (
            False
            if name in raised
            else None
            if pair is None
            else _error(*pair) <= tolerance("transform", dtype)
        )
    report.errors.update(raised)


def kink_results(gate, *, dtype: str = "float64", seed: int = 0) -> list:
    """The gate at its kink cases (Gate.defkinks), fnn against JAX: a list of (label, fnn's
    output, the forward's output, fnn's input gradients, jax.vjp's input gradients), NumPy
    arrays, at one random cotangent per case; all cases computed in one jitted program."""
    with jax.enable_x64(dtype == "float64"):
        return case_results(gate, gate.kink_cases(dtype), dtype=dtype, seed=seed)


def case_results(gate, cases, *, dtype: str = "float64", seed: int = 0) -> list:
    """As kink_results, at any `cases` of the gate (made in `dtype`)."""
    with jax.enable_x64(dtype == "float64"):
        rng = np.random.default_rng(seed + 1)
        preps = [_Prepared(gate, c, dtype, rng, c.label or f"#{i}") for i, c in enumerate(cases)]

        def run(ds, cfs):
            out = []
            for p, d, cf in zip(preps, ds, cfs):
                mine_out, pullback = fnn_vjp(p.recorded, *d)
                out.append((mine_out, p.forward(*d), pullback(p.ct(cf)), p.ref(cf, *d)))
            return out

        options = FAST_COMPILE if jax.default_backend() == "cpu" else None
        res = jax.jit(run, compiler_options=options)([p.d for p in preps], [p.cf for p in preps])
        return [(p.label, *jax.tree_util.tree_map(np.asarray, r)) for p, r in zip(preps, res)]


def _transforms(p: _Prepared, d, cf, jitted: bool, raised: dict, checks=CHECKS, same=None) -> dict:
    """name -> (fnn's result, jax.vjp's result) under each transform of `checks`; None where it
    raised (the reason added to `raised`) or does not apply (no float input).

    Called while tracing the jitted check (jitted=True: the jit transform is the enclosing jit)
    or eagerly; a transform that raises while tracing is caught here, on its own."""
    if not d:
        return {t: None for t in TRANSFORMS + (SECOND_ORDER,)}
    stack = [jnp.stack([x, 0.5 * x]) for x in d]
    cfs = [jnp.stack([c, -c]) for c in cf]
    argnums = tuple(range(len(d)))

    def loss_mine(*d):
        return real_sum(p.first(p.recorded(*d)) ** 2)

    def loss_ref(*d):
        return real_sum(p.first(p.forward(*d)) ** 2)

    def second_order(pull, f):
        def total(*dd):
            grads = pull(f, *dd)[1](p.ct(cf))
            return sum(
                real_sum(jnp.sin(x))
                for x in jax.tree_util.tree_leaves(grads)
                if x.dtype != jax.dtypes.float0
            )

        return jax.grad(total, argnums=argnums)(*d)

    def grad_of_vmap(fn):
        def total(*d):
            return sum(real_sum(o**2) for o in jax.tree_util.tree_leaves(jax.vmap(fn)(cfs, *d)))

        return jax.grad(total, argnums=argnums)(*stack)

    tests = {
        "jit": lambda: (
            same
            if same is not None
            else ((p.mine if jitted else jax.jit(p.mine))(cf, *d), p.ref(cf, *d))
        ),
        "vmap": lambda: (jax.vmap(p.mine)(cfs, *stack), jax.vmap(p.ref)(cfs, *stack)),
        "grad(vmap)": lambda: (grad_of_vmap(p.mine), grad_of_vmap(p.ref)),
        "vmap(grad)": lambda: (
            jax.vmap(fnn_grad(loss_mine, argnums=argnums))(*stack),
            jax.vmap(jax.grad(loss_ref, argnums=argnums))(*stack),
        ),
        SECOND_ORDER: lambda: (second_order(fnn_vjp, p.recorded), second_order(jax.vjp, p.forward)),
    }
    if not p.second_order:  # JAX cannot differentiate this VJP (Case.second_order): not judged
        tests = {k: v for k, v in tests.items() if k not in DIFFERENTIATE_THE_VJP}
    found = {name: _attempt(name, check, raised) for name, check in tests.items() if name in checks}
    return {name: found.get(name) for name in TRANSFORMS + (SECOND_ORDER,)}


def _attempt(name: str, check, raised: dict):
    """check(), or None with the reason in raised[name] when it raises."""
    try:
        return check()
    except Exception as e:  # a transform that breaks is a finding: keep why
        raised[name] = _reason(e)
        return None


def _error(a, b, special: bool = False) -> float:
    """The largest rel_error over the leaves of two results (pytrees): each input's gradient
    (each output) judged on its own scale; inf when their structures differ. special: NaNs
    and infinities must match (at kinks, see rel_error)."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    if len(la) != len(lb) or any(np.shape(x) != np.shape(y) for x, y in zip(la, lb)):
        return float("inf")
    return max((rel_error(x, y, special=special) for x, y in zip(la, lb)), default=0.0)


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


def _short(dtype: str) -> str:
    return {"float64": "f64", "float32": "f32"}.get(dtype, dtype)
