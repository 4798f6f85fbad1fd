"""`check_grads`: fnn's gradient (custom) vs jax.grad (built-in) vs central differences, per leaf.

    report = fnn.check_grads(loss, params, x, y)      # argnums=0: the gradient wrt params
    print(report)                                     # one row per parameter leaf
    report.ok, report.to_markdown(), report.to_json()

Three gradients of every float leaf of the differentiated argument(s):
  custom    fnn.grad (the hand-written VJPs), in the model's own dtype;
  built-in  jax.grad of the same function (JAX differentiates the gates' forwards);
  numerical central differences of f, computed in float64 even when the model runs in float32
            (the float leaves of every argument are cast up inside a `jax.enable_x64` context,
            restored afterwards), on at most `max_elements` elements per leaf (seeded sample,
            plus the element where custom and built-in differ most).

Step size: h = cbrt(eps) * max(1, |x|) with eps that of the dtype f is evaluated in (about 6e-6
in float64, 5e-3 in float32), the choice that balances truncation (h**2) against rounding
(eps / h); the step actually representable, (x + h) - x, is the one divided by.

Kinks: when the one-sided slopes (f(x+h) - f(x)) / h and (f(x) - f(x-h)) / h disagree, the
element is re-measured at h / 8. A smooth f shrinks the disagreement 8 times; a kink (ReLU at
0, a max tie, abs at 0) within reach keeps it. Such an element is reported as a kink: central
differences are meaningless there, so a gradient agrees with the numerical one when it lies
between the one-sided slopes (either one included). Custom and built-in must still agree
there: fnn's rules follow JAX's convention at every kink, so a disagreement with jax.grad at a
kink fails custom~built-in like anywhere else.

Errors (CS231n): rel = max|a - b| / (max|a| + max|b|). Against the numerical gradient, the
maxima are taken over the whole analytic leaf and the sampled reference, so a sample of
near-zero entries does not turn rounding noise into a 100% error. For the same reason the
denominator is at least `floor` = 1% of the largest gradient entry of any leaf: a leaf whose
exact gradient is 0 (a conv bias before BatchNorm) is all rounding noise, which is no error.

Verdict per leaf, naming the odd one out:
  ok                                  all three agree (at kinks: custom and built-in, and both
                                      between the one-sided slopes)
  custom wrong                        built-in and numerical agree, fnn's gradient does not
  built-in disagrees                  custom and numerical agree, jax.grad does not
  finite differences unreliable here  custom and built-in agree, the numerical one does not
  custom and built-in disagree        both agree with numerics where sampled, not elsewhere
  all three disagree
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from fnn.check.numeric import differences
from fnn.check.tolerances import tolerance
from fnn.pytrees import path_name

VERDICTS = (
    "ok",
    "surrogate",
    "custom wrong",
    "built-in disagrees",
    "finite differences unreliable here",
    "custom and built-in disagree",
    "all three disagree",
)
KINK_SHRINK = 8.0  # the second, smaller step for elements whose one-sided slopes disagree
FLOOR = 1e-2  # relative errors are measured against at least this fraction of the largest gradient


@dataclasses.dataclass
class Comparison:
    """Two gradients of one leaf: max abs error, CS231n relative error, cosine similarity."""

    max_abs: float
    rel: float
    cos: float


@dataclasses.dataclass
class LeafReport:
    name: str
    shape: tuple
    dtype: str
    norm: float  # |custom gradient| (built-in's when custom failed)
    sampled: int  # elements checked numerically
    step: float  # h at |x| <= 1
    kinks: list  # [{"index", "forward", "backward" (one-sided slopes), "custom", "builtin"}]
    custom_vs_builtin: Comparison | None
    custom_vs_numeric: Comparison | None
    builtin_vs_numeric: Comparison | None
    verdict: str


@dataclasses.dataclass
class GradReport:
    """The result of `check_grads`: one LeafReport per float leaf, and how it was measured."""

    leaves: list
    seed: int
    dtype: str
    numeric_dtype: str
    device: str
    jax_version: str
    rtol: float
    numeric_rtol: float
    max_elements: int
    step: float | None  # a fixed step if one was asked for; None: chosen from the dtype
    floor: float  # the smallest denominator of a relative error (FLOOR x largest gradient)
    error: str | None = None  # fnn.grad or jax.grad raised this
    surrogates: list = dataclasses.field(default_factory=list)  # "rule (gate)" in effect

    @property
    def ok(self) -> bool:
        """True when every leaf's verdict is 'ok' or 'surrogate' (and neither gradient raised):
        under surrogate rules (fnn.rulebook) the custom gradient differs from jax.grad on
        purpose, and its distance is reported, not judged."""
        return self.error is None and all(
            leaf.verdict in ("ok", "surrogate") for leaf in self.leaves
        )

    def __getitem__(self, name) -> LeafReport:
        for leaf in self.leaves:
            if leaf.name == name:
                return leaf
        raise KeyError(f"no leaf named {name!r}; leaves: {[l.name for l in self.leaves]}")

    # -- rendering --------------------------------------------------------------------------
    HEADER = (
        "leaf",
        "shape",
        "grad norm",
        "custom~built-in",
        "cos",
        "custom~numeric",
        "built-in~numeric",
        "checked",
        "kinks",
        "verdict",
    )

    def rows(self) -> list[tuple]:
        def rel(c):
            return "-" if c is None else f"{c.rel:.1e}"

        return [
            (
                l.name,
                "x".join(map(str, l.shape)) or "scalar",
                f"{l.norm:.3g}",
                rel(l.custom_vs_builtin),
                "-" if l.custom_vs_builtin is None else f"{l.custom_vs_builtin.cos:.6f}",
                rel(l.custom_vs_numeric),
                rel(l.builtin_vs_numeric),
                str(l.sampled),
                str(len(l.kinks)),
                l.verdict,
            )
            for l in self.leaves
        ]

    def _summary(self) -> str:
        bad = [l for l in self.leaves if l.verdict not in ("ok", "surrogate")]
        kinks = sum(len(l.kinks) for l in self.leaves)
        head = "OK" if self.ok else f"FAILED ({len(bad)} of {len(self.leaves)} leaves)"
        return (
            f"gradient check {head}: {self.dtype} model on {self.device}, numerical in "
            f"{self.numeric_dtype} ({'step %g' % self.step if self.step else 'step from dtype'}"
            f"), seed {self.seed}, rtol {self.rtol:g} (custom~built-in), {self.numeric_rtol:g} "
            f"(~numeric)"
            + (
                f"; {kinks} kink(s), where custom and built-in must agree and "
                "lie between the one-sided slopes"
                if kinks
                else ""
            )
            + (
                f"; surrogate rules in effect: {', '.join(self.surrogates)} (custom is "
                "deliberately not the exact gradient: cos and custom~built-in say how far)"
                if self.surrogates
                else ""
            )
            + (f"\nerror: {self.error}" if self.error else "")
        )

    def __str__(self) -> str:
        rows = [self.HEADER] + self.rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.HEADER))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        return self._summary() + "\n" + "\n".join(lines) + self._kink_lines()

    def _kink_lines(self) -> str:
        out = []
        for leaf in self.leaves:
            for k in leaf.kinks[:3]:
                out.append(
                    f"  kink {leaf.name}{k['index']}: one-sided slopes {k['backward']:.6g} "
                    f"| {k['forward']:.6g}; custom {k['custom']:.6g}, built-in "
                    f"{k['builtin']:.6g}"
                )
        return ("\n" + "\n".join(out)) if out else ""

    def to_markdown(self) -> str:
        lines = [
            self._summary().replace("\n", "  \n"),
            "",
            "| " + " | ".join(self.HEADER) + " |",
            "|" + "---|" * len(self.HEADER),
        ]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self.rows()]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ok"] = self.ok
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "GradReport":
        d = json.loads(text)
        d.pop("ok", None)
        leaves = []
        for leaf in d.pop("leaves"):
            for k in ("custom_vs_builtin", "custom_vs_numeric", "builtin_vs_numeric"):
                leaf[k] = None if leaf[k] is None else Comparison(**leaf[k])
            leaf["shape"] = tuple(leaf["shape"])
            leaves.append(LeafReport(**leaf))
        return cls(leaves=leaves, **d)


# ----------------------------------------------------------------------------------------------


def check_grads(
    f,
    *args,
    argnums=0,
    seed: int = 0,
    rtol: float | None = None,
    numeric_rtol: float | None = None,
    max_elements: int = 20,
    numeric_dtype: str | None = "float64",
    step: float | None = None,
    rules=None,
) -> GradReport:
    """Compare fnn.grad, jax.grad and central differences of scalar `f(*args)`, leaf by leaf.

    Where a surrogate rule (fnn.Rule of kind "surrogate") is in effect, a leaf whose custom
    gradient differs from jax.grad gets the verdict "surrogate" instead of a failure. Nothing is
    raised for wrong gradients: they are the report's findings.

    Args:
        f: the function, returning a float scalar (a loss).
        *args: its positional arguments.
        argnums: the differentiated argument(s), an int or a tuple, as in fnn.grad.
        seed: the seed choosing the elements checked numerically.
        rtol: custom vs built-in tolerance (default: tolerance "model" by dtype,
            fnn.check.tolerances).
        numeric_rtol: analytic vs numerical tolerance (default: tolerance "numeric").
        max_elements: the elements per leaf checked numerically.
        numeric_dtype: the dtype the differences are computed in ("float64"; None: the model's
            own).
        step: a fixed h instead of the dtype-chosen one (for comparison with fixed-step
            checkers).
        rules: rule overrides for fnn.grad, as in fnn.grad (those of an enclosing `fnn.rules`
            block apply too).

    Returns:
        A GradReport: per leaf, the three gradients compared and a verdict.

    Raises:
        TypeError: an argument named by argnums has a non-float leaf, or `f` does not return a
            float scalar.
    """
    nums, paths, leaves, treedefs = _differentiated_leaves(args, argnums)
    _check_loss(f, args)
    dtypes = sorted({str(l.dtype) for l in leaves})
    tol, ntol = _tolerances(rtol, numeric_rtol, dtypes)
    surrogates, custom, builtin, errors = _analytic_grads(f, args, nums, rules)
    tolerances = (tol, ntol, _floor(custom, builtin))
    numeric = _Numeric(f, args, nums, treedefs, leaves, numeric_dtype, step)
    reports = _leaf_reports(
        paths, leaves, custom, builtin, numeric, seed, max_elements, tolerances, surrogates
    )
    return _grad_report(
        reports, seed, dtypes, numeric, tolerances, max_elements, step, errors, surrogates
    )


def _check_loss(f, args) -> None:
    """A TypeError unless f(*args) is a float scalar (found without computing it)."""
    out = jax.eval_shape(f, *args)
    if not (hasattr(out, "shape") and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
        raise TypeError(f"check_grads: f must return a float scalar (a loss), got {out}")


def _tolerances(rtol, numeric_rtol, dtypes: list) -> tuple:
    """(custom vs built-in, analytic vs numerical) tolerances: those given, or the largest of
    tolerance "model" and "numeric" over `dtypes` (fnn.check.tolerances)."""
    tol = rtol if rtol is not None else max(tolerance("model", d) for d in dtypes)
    ntol = (
        numeric_rtol if numeric_rtol is not None else max(tolerance("numeric", d) for d in dtypes)
    )
    return tol, ntol


def _floor(custom, builtin) -> float:
    """The errors' least denominator: FLOOR times the largest entry of any analytic gradient
    (of those that exist)."""
    return FLOOR * max(
        [_maxabs(np.asarray(g)) for g in (custom or []) + (builtin or [])], default=0.0
    )


def _grad_report(
    reports, seed, dtypes, numeric, tolerances, max_elements, step, errors, surrogates
) -> GradReport:
    """The GradReport of the LeafReports `reports`, with what they were computed with: the
    settings, `tolerances` ((tol, ntol, floor)), the device, JAX's version, and the analytic
    gradients' `errors`."""
    tol, ntol, floor = tolerances
    device = jax.devices()[0]
    return GradReport(
        reports,
        seed,
        "+".join(dtypes),
        numeric.dtype,
        f"{device.platform}:{device.device_kind}",
        jax.__version__,
        tol,
        ntol,
        max_elements,
        step,
        floor,
        "; ".join(errors) or None,
        surrogates,
    )


def _differentiated_leaves(args, argnums):
    """(the differentiated arguments' positions, the names of their leaves, the leaves as
    arrays, the arguments' treedefs); TypeError for a leaf that is not float."""
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    paths, leaves, treedefs = [], [], []
    for a in nums:
        flat, tree = jax.tree_util.tree_flatten_with_path(args[a])
        treedefs.append(tree)
        for path, leaf in flat:
            prefix = f"arg{a}" if len(nums) > 1 or not path else ""
            paths.append(path_name(path, prefix))
            leaves.append(jnp.asarray(leaf))
    bad = [(n, l.dtype) for n, l in zip(paths, leaves) if not jnp.issubdtype(l.dtype, jnp.floating)]
    if bad:
        which = ", ".join(f"{n or 'the argument'} ({d})" for n, d in bad)
        raise TypeError(
            f"check_grads: gradients are only defined for float leaves; argnums "
            f"{argnums!r} includes {which}"
        )
    return nums, paths, leaves, treedefs


def _analytic_grads(f, args, nums, rules):
    """(the surrogate rules applied, fnn.grad's flat gradients, jax.grad's, errors): a gradient
    that fails is None, and why is in `errors`."""
    from fnn.transforms import grad as fnn_grad
    from fnn.transforms import trace as fnn_trace

    surrogates = _surrogates(lambda: fnn_trace(f, *args, argnums=nums, rules=rules))
    errors = []
    custom = _flat_grads(lambda: fnn_grad(f, argnums=nums, rules=rules)(*args), "fnn.grad", errors)
    builtin = _flat_grads(lambda: jax.grad(f, argnums=nums)(*args), "jax.grad", errors)
    return surrogates, custom, builtin, errors


def _leaf_reports(
    paths, leaves, custom, builtin, numeric, seed, max_elements, tolerances, surrogates
) -> list:
    """A LeafReport per leaf, its elements checked numerically sampled in turn by one generator
    seeded with `seed`; `tolerances`: (tol, ntol, floor). With surrogate rules in effect, a leaf
    that does not pass while both analytic gradients exist gets the verdict "surrogate"."""
    reports, rng = [], np.random.default_rng(seed)
    with jax.enable_x64(numeric.x64):
        for j, (name, leaf) in enumerate(zip(paths, leaves)):
            c = None if custom is None else np.asarray(custom[j], np.float64)
            b = None if builtin is None else np.asarray(builtin[j], np.float64)
            idx = _sample(leaf.size, max_elements, rng, c, b)
            report = _leaf_report(name, leaf, c, b, idx, numeric, j, *tolerances)
            if surrogates and report.verdict != "ok" and c is not None and b is not None:
                report.verdict = "surrogate"
            reports.append(report)
    return reports


def _surrogates(record) -> list:
    """'rule (gate)' of each surrogate rule the recorded function applies (none if recording
    fails: fnn.grad then reports the failure)."""
    from fnn.autodiff.overrides import Rule

    try:
        tape = record().tape
    except Exception:  # the same call is made by fnn.grad next, which reports why it fails
        return []
    found = [
        f"{r.rule.name} ({r.gate.name})"
        for r in tape.records
        if isinstance(r.rule, Rule) and r.rule.kind == "surrogate"
    ]
    return list(dict.fromkeys(found))


def _flat_grads(run, what, errors):
    try:
        return [leaf for g in run() for leaf in jax.tree_util.tree_leaves(g)]
    except Exception as e:  # a broken VJP (contract error) is a finding, not a crash
        errors.append(f"{what} raised {type(e).__name__}: {e}")
        return None


def _sample(size, k, rng, c, b):
    """Flat indices to check numerically: all of them, or k seeded ones, a quarter of them
    replaced by the elements where custom and built-in differ most (numerics arbitrate)."""
    if size <= k:
        return np.arange(size)
    idx = rng.choice(size, k, replace=False)
    if c is not None and b is not None:
        gap = np.abs(c - b).reshape(-1)
        worst = [int(i) for i in np.argsort(-gap, kind="stable")[: max(1, k // 4)] if gap[i] > 0]
        rest = [int(i) for i in idx if i not in worst]
        idx = np.array(worst + rest[: k - len(worst)])
    return np.sort(idx)


class _Numeric:
    """f of the flat differentiated leaves, jitted once, in `numeric_dtype` (float64 default),
    and its slopes along single elements (fnn.check.numeric.differences)."""

    def __init__(self, f, args, nums, treedefs, leaves, numeric_dtype, step):
        self.x64 = numeric_dtype == "float64" or bool(jax.config.jax_enable_x64)
        sizes = [t.num_leaves for t in treedefs]
        self.fixed_step = step
        with jax.enable_x64(self.x64):
            cast = (lambda x: x) if numeric_dtype is None else _caster(numeric_dtype)

            def F(*flat):
                full = [jax.tree_util.tree_map(cast, a) for a in args]
                k = 0
                for a, tree, n in zip(nums, treedefs, sizes):
                    full[a] = jax.tree_util.tree_unflatten(tree, flat[k : k + n])
                    k += n
                return f(*full)

            self.leaves = [np.array(cast(l)) for l in leaves]
            self.vectorize = True
            try:
                self.F = jax.jit(F)
                f0 = self.F(*self.leaves)
            except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError):
                self.F, self.vectorize = F, False  # f branches on values: evaluate eagerly
                f0 = self.F(*self.leaves)
            self.dtype = str(jnp.result_type(f0))
            self.f0 = float(f0)
        self.eps = float(np.finfo(self.dtype).eps)
        self.base_step = step if step is not None else self.eps ** (1 / 3)

    def slopes(self, j, idx, h):
        """(backward, forward, central, noise) differences of f along the elements `idx` of leaf
        j with steps `h` (one per element), as float64 arrays. noise: the rounding error of a
        slope; nan slopes and infinite noise where h is below x's resolution."""
        if not len(idx):
            return (np.zeros(0),) * 4

        def along(x):
            return self.F(*[x if i == j else leaf for i, leaf in enumerate(self.leaves)])

        f_plus, f_minus, h_plus, h_minus = (
            np.asarray(a, np.float64)
            for a in differences(along, self.leaves[j], idx, h, vectorize=self.vectorize)
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            taken = (h_plus > 0) & (h_minus > 0)
            top = np.maximum(np.maximum(np.abs(f_plus), np.abs(f_minus)), max(abs(self.f0), 1e-300))
            noise = np.where(taken, 4 * self.eps * top / np.minimum(h_plus, h_minus), np.inf)
            bwd = np.where(taken, (self.f0 - f_minus) / h_minus, np.nan)
            fwd = np.where(taken, (f_plus - self.f0) / h_plus, np.nan)
            mid = np.where(taken, (f_plus - f_minus) / (h_plus + h_minus), np.nan)
        return bwd, fwd, mid, noise

    def steps(self, j, idx):
        """The step of each element `idx` of leaf j: base_step * max(1, |x|) (or a fixed one)."""
        x = np.abs(self.leaves[j].reshape(-1)[idx].astype(np.float64))
        if self.fixed_step is not None:
            return np.full(len(idx), self.base_step)
        return self.base_step * np.maximum(1.0, x)


def _caster(dtype):
    def cast(x):
        if isinstance(x, float) or (hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)):
            return jnp.asarray(x, dtype)
        return x

    return cast


def _leaf_report(name, leaf, c, b, idx, numeric, j, tol, ntol, floor) -> LeafReport:
    """The LeafReport of leaf j (`c`, `b`: its custom and built-in gradients, None where they
    failed), checked numerically at the flat indices `idx`."""
    analytic = c if c is not None else b
    scale = max(_maxabs(c), _maxabs(b), floor)
    lo, hi, pad, kinks = _accepted(leaf, c, b, idx, numeric, j, ntol * scale)

    def vs_numeric(a):
        if a is None:
            return None
        a_s = a.reshape(-1)[idx]
        ref = np.clip(a_s, lo - pad, hi + pad)  # anywhere inside a kink's interval is exact
        return _compare(a_s, ref, max(_maxabs(a) + _maxabs(ref), floor))

    cb = None
    if c is not None and b is not None:  # compared everywhere, kinks included: fnn follows
        # JAX's convention at every kink (tests/test_kinks.py), so a difference is a failure
        cb = _compare(c, b, max(_maxabs(c) + _maxabs(b), floor))
    cn, bn = vs_numeric(c), vs_numeric(b)
    verdict = _verdict(
        cb is not None and cb.rel <= tol,
        cn is not None and cn.rel <= ntol,
        bn is not None and bn.rel <= ntol,
    )
    norm = float("nan") if analytic is None else float(np.linalg.norm(analytic))
    return LeafReport(
        name,
        tuple(leaf.shape),
        str(leaf.dtype),
        norm,
        int(len(idx)),
        float(numeric.base_step),
        kinks,
        cb,
        cn,
        bn,
        verdict,
    )


def _accepted(leaf, c, b, idx, numeric, j, slack):
    """(lo, hi, pad, kinks): per sampled element `idx` of leaf j, the interval [lo, hi] a
    gradient is accepted in, widened by `pad` (`slack` at a kink, else 0), and the kinks found.
    Where the one-sided slopes disagree by more than `slack` and their noise, the element is
    measured again at h / KINK_SHRINK: a kink if the disagreement does not halve (its interval:
    the one-sided slopes), smooth otherwise (the closer central difference)."""
    lo, hi, pad, kinks = [], [], [], []
    h = numeric.steps(j, idx)
    bwd, fwd, mid, noise = numeric.slopes(j, idx, h)
    gap = np.abs(fwd - bwd)
    with np.errstate(invalid="ignore"):
        again = np.flatnonzero(gap > slack + noise)  # re-measure closer: does it shrink?
    second = dict(zip(again, zip(*numeric.slopes(j, idx[again], h[again] / KINK_SHRINK))))
    for i, k in enumerate(idx):
        interval = (mid[i], mid[i])
        if i in second:
            bwd2, fwd2, mid2, noise2 = second[i]
            if abs(fwd2 - bwd2) > 0.5 * gap[i] and abs(fwd2 - bwd2) > noise2:  # a kink
                interval = (min(bwd[i], fwd[i], bwd2, fwd2), max(bwd[i], fwd[i], bwd2, fwd2))
                kinks.append(_kink(leaf, k, bwd2, fwd2, c, b))
            else:  # smooth after all, or a kink between h/8 and h: the closer estimate
                interval = (mid2, mid2)
        lo.append(interval[0])
        hi.append(interval[1])
        pad.append(0.0 if interval[0] == interval[1] else slack)
    return np.array(lo), np.array(hi), np.array(pad), kinks


def _kink(leaf, k, backward, forward, c, b) -> dict:
    """The record of a kink at flat index k of leaf: its one-sided slopes (measured at the
    closer step) and the custom and built-in gradients there."""
    return {
        "index": [int(n) for n in np.unravel_index(k, leaf.shape)],
        "backward": float(backward),
        "forward": float(forward),
        "custom": _at(c, k),
        "builtin": _at(b, k),
    }


def _verdict(cb_ok, cn_ok, bn_ok) -> str:
    if cb_ok:
        return "ok" if (cn_ok or bn_ok) else "finite differences unreliable here"
    if bn_ok and not cn_ok:
        return "custom wrong"
    if cn_ok and not bn_ok:
        return "built-in disagrees"
    return "custom and built-in disagree" if cn_ok else "all three disagree"


def _compare(a, b, denom) -> Comparison:
    """max abs error, CS231n relative error (max|a - b| / denom), cosine similarity."""
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    rel = diff / denom if denom > 0 else diff
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = float(a @ b / (na * nb)) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    return Comparison(diff, float(rel), cos)


def _maxabs(a) -> float:
    return 0.0 if a is None or a.size == 0 else float(np.max(np.abs(a)))


def _at(a, k):
    return None if a is None else float(a.reshape(-1)[k])
