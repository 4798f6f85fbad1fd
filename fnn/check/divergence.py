"""`locate_divergence`: which gate's hand-written VJP disagrees with JAX, and where it was called.

    bad = fnn.locate_divergence(loss, params, x, y)
    print(bad)          # the disagreeing gates, first in backward order first
    bad.ok, bad[0].gate, bad[0].site

The function is recorded once by fnn (`fnn.trace`). The backward pass then replays the tape
as `fnn.autodiff.backward` does, seeded with ones, but at every record it also runs `jax.vjp`
of that gate's forward at the recorded inputs with the same upstream gradient `g`, and compares
the two gradients of each input (tolerance "model" of fnn.check.tolerances, by the input's
dtype). The reference (JAX's) gradients are the ones passed on upstream, so one wrong gate does
not make the gates before it look wrong: each gate is judged on its own.

A gate application is reported when its VJP disagrees, when its VJP raises (or breaks its
contract), and when the reference cannot be computed: JAX differentiates float inputs only,
so an input that needs a gradient but is not float is reported before any call, and a forward
that jax.vjp cannot differentiate is reported with JAX's exception. Such a gate is not
compared; its hand-written gradients are passed on upstream.

A gate with no JAX reference of its own (`Gate.reference is False`: the tangent and output
gates through which fnn transposes a custom JVP rule) passes its gradients on uncompared; the
rule's tangent computations between them are ordinary gates, compared as every gate. A
custom_vjp function's gate is compared with JAX's use of the same custom rule.

A gate whose backward is overridden by a surrogate rule (an `fnn.Rule` of kind "surrogate",
e.g. from fnn.rulebook) differs from JAX on purpose: it is listed in `Divergences.surrogates`
with its distance from the exact gradient (cosine similarity, relative error), and it is a
divergence only when it does not follow its own declared formula (jax.vjp of the rule's
`reference` function). Its gradients are passed on upstream, as training would use them. Any
other override (a Rule of kind "exact", or a plain function) must equal JAX, as every gate.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff import is_float
from fnn.autodiff.overrides import Rule
from fnn.check.gates import gate_functions
from fnn.check.numeric import rel_error
from fnn.check.tolerances import tolerance
from fnn.errors import describe
from fnn.transforms import trace


@dataclasses.dataclass
class GateDivergence:
    """One gate application whose hand-written VJP disagrees with jax.vjp of its forward."""

    gate: str
    site: str  # file:line of the call
    inputs: tuple  # 'f32[4,8]' per positional input
    outputs: tuple
    error: float  # the largest relative error over the inputs (inf: the VJP raised; nan: not
    #               compared, the reference could not be computed)
    errors: tuple  # per input; None where no gradient was needed or nothing was compared
    record: int  # position of the record on the tape (forward order)
    message: str = ""  # why it was not compared: the VJP raised, or the reference

    def __str__(self):
        worst = max(
            (k for k, e in enumerate(self.errors) if e is not None),
            key=lambda k: self.errors[k],
            default=None,
        )
        where = f" in the gradient of input {worst}" if worst is not None else ""
        what = self.message or f"relative error {self.error:.3g}{where}"
        return (
            f"gate '{self.gate}' at {self.site}: ({', '.join(self.inputs)}) -> "
            f"({', '.join(self.outputs)}): {what}"
        )


@dataclasses.dataclass
class SurrogateUse:
    """A gate applied with a surrogate backward rule: how far it is from the exact gradient."""

    gate: str
    rule: str
    site: str
    record: int
    cos: float  # cosine similarity with the exact (jax.vjp) gradient, over all inputs
    rel: float  # relative error from the exact gradient
    formula_error: float | None  # against jax.vjp of the rule's reference (None: none declared)
    follows: bool | None = None  # formula_error within the tolerance (None: nothing to check)

    def __str__(self):
        formula = (
            ""
            if self.follows is None
            else f", {'follows' if self.follows else 'does NOT follow'} its formula (error "
            f"{self.formula_error:.1e})"
        )
        cos = "n/a (the exact gradient is 0)" if np.isnan(self.cos) else f"{self.cos:.3f}"
        return (
            f"gate '{self.gate}' at {self.site}: surrogate rule {self.rule}; cos {cos}, "
            f"relative distance {self.rel:.3g} from the exact gradient{formula}"
        )


class Divergences(list):
    """The disagreeing gates (a list of GateDivergence, first in backward order first), and
    the gates applied with surrogate rules (`surrogates`, which are not failures)."""

    def __init__(self, items=(), *, checked: int = 0, rtol: float | None = None, surrogates=()):
        super().__init__(items)
        self.checked = checked
        self.rtol = rtol
        self.surrogates = list(surrogates)

    @property
    def ok(self) -> bool:
        return len(self) == 0

    def __str__(self):
        tol = "by dtype" if self.rtol is None else f"{self.rtol:g}"
        n_exact = self.checked - len(self.surrogates)
        if self.ok:
            lines = [
                f"locate_divergence: all {n_exact} gate applications with exact rules "
                f"agree with jax.vjp (rtol {tol})"
            ]
        else:
            lines = [
                f"locate_divergence: {len(self)} of {self.checked} gate applications "
                f"disagree (rtol {tol}), first in backward order first:"
            ]
            lines += [f"  {i + 1}. {d}" for i, d in enumerate(self)]
        if self.surrogates:
            lines.append(
                f"  {len(self.surrogates)} with surrogate rules (deliberately not the "
                "exact gradient):"
            )
            lines += [f"    {s}" for s in self.surrogates]
        return "\n".join(lines)

    __repr__ = __str__


def _divergence(rec, pos: int, mine, ref, errors, message: str) -> GateDivergence:
    """The GateDivergence of record `rec` (at `pos` on the tape): its VJP's gradients `mine`
    (None: it raised), the reference `ref` (None: none could be made), the (error, tolerance)
    per input (None where not compared) and what went wrong otherwise (`message`)."""
    error = (
        float("inf")
        if mine is None
        else float("nan")
        if ref is None
        else max(e[0] for e in errors if e is not None)
    )
    return GateDivergence(
        rec.gate.name,
        rec.site,
        tuple(describe(x) for x in rec.inputs),
        tuple(describe(o) for o in rec.outs),
        error,
        tuple(None if e is None else e[0] for e in errors),
        pos,
        message,
    )


def locate_divergence(f, *args, argnums=0, rtol: float | None = None, rules=None) -> Divergences:
    """Replay f's recorded graph and compare every gate's VJP with jax.vjp of its forward.

    Every output is seeded with ones. A VJP that raises or breaks its contract is reported as a
    divergence, not raised.

    Args:
        f: any JAX function (its output may be any pytree).
        *args: its positional arguments.
        argnums: which arguments are differentiated (int or tuple).
        rtol: tolerance on the CS231n relative error per input (default: tolerance("model", the
            input's dtype)).
        rules: rule overrides, as for fnn.grad (those of an enclosing `fnn.rules` block apply
            too).

    Returns:
        The `Divergences`: a list of the gates whose VJP disagrees (GateDivergence, first in
        backward order first), empty when every gate agrees; `.surrogates` lists the gates
        applied with surrogate rules (not failures).

    Raises:
        TypeError: argnums is not an int or a non-empty tuple of ints, or an input is complex.
        ValueError: argnums names an argument `f` was not given.
        MissingRuleError: `f` uses a JAX primitive for which fnn has no rule.
    """
    tr = trace(f, *args, argnums=argnums, rules=rules)

    found, checked, surrogates = [], [], []

    def compare(pos, rec, g, needs, got):
        """The hand-written VJP against jax.vjp of the gate's forward; passes on the reference
        (so one wrong gate does not make every gate before it look wrong)."""
        checked.append(pos)
        mine, message = None, ""
        try:
            mine = rec.pullback(g, needs)
        except Exception as e:  # a VJP that raises or breaks its contract is a divergence too
            message = f"the VJP raised {type(e).__name__}: {e}"
        ref, no_reference = _reference(rec, g, needs)
        message = message or no_reference
        if _is_surrogate(rec.rule) and mine is not None:
            use, wrong = _surrogate_use(rec, pos, g, needs, mine, ref, rtol)
            surrogates.append(use)
            if wrong is not None:
                found.append(wrong)
            return mine  # the surrogate's gradients flow on, as in training
        errors = tuple(
            None
            if not need or ref is None or mine is None
            else _error(mine[k], ref[k], rec.inputs[k], rtol)
            for k, need in enumerate(needs)
        )
        if message or any(e[0] > e[1] for e in errors if e is not None):
            found.append(_divergence(rec, pos, mine, ref, errors, message))
        return ref if ref is not None else mine

    tr.backward(tr.seeds(), compare)
    return Divergences(found, checked=len(checked), rtol=rtol, surrogates=surrogates)


def _is_surrogate(rule) -> bool:
    return isinstance(rule, Rule) and rule.kind == "surrogate"


def _surrogate_use(rec, pos, g, needs, mine, exact, rtol):
    """(SurrogateUse, a GateDivergence if the rule does not follow its declared formula)."""
    rule = rec.rule
    flat = lambda grads: np.concatenate(
        [
            np.ravel(np.asarray(x, np.float64))
            for k, gk in enumerate(grads)
            if needs[k]
            for x in jax.tree_util.tree_leaves(gk)
        ]
        or [np.zeros(0)]
    )
    a = flat(
        [
            m if m is not None else jax.tree_util.tree_map(jnp.zeros_like, rec.inputs[k])
            for k, m in enumerate(mine)
        ]
    )
    b = flat(exact) if exact is not None else np.zeros_like(a)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")
    rel = rel_error(a, b) if a.size else 0.0
    formula_error, wrong = None, None
    if rule.reference is not None:
        static = {k: v for k, v in rec.static.items()}
        try:
            ref = jax.vjp(lambda *xs: rule.reference(*xs, **static), *rec.inputs)[1](g)
        except Exception as e:  # the reference cannot be differentiated: say so
            wrong = GateDivergence(
                rec.gate.name,
                rec.site,
                tuple(describe(x) for x in rec.inputs),
                tuple(describe(o) for o in rec.outs),
                float("nan"),
                (None,) * len(needs),
                pos,
                f"surrogate rule {rule.name}: jax.vjp of its reference raised "
                f"{type(e).__name__}: {e}",
            )
        else:
            errs = [_error(mine[k], ref[k], rec.inputs[k], rtol) for k, n in enumerate(needs) if n]
            formula_error = max((e[0] for e in errs), default=0.0)
            if any(e[0] > e[1] for e in errs):
                wrong = GateDivergence(
                    rec.gate.name,
                    rec.site,
                    tuple(describe(x) for x in rec.inputs),
                    tuple(describe(o) for o in rec.outs),
                    formula_error,
                    tuple(e[0] for e in errs),
                    pos,
                    f"surrogate rule {rule.name} does not follow its declared formula "
                    f"({rule.formula}): relative error {formula_error:.3g}",
                )
    follows = None if formula_error is None else wrong is None
    return (
        SurrogateUse(rec.gate.name, rule.name, rec.site, pos, cos, rel, formula_error, follows),
        wrong,
    )


def _reference(rec, g, needs):
    """(jax.vjp of the gate's forward at the recorded inputs for the inputs that need it, "")
    or (None, why the reference cannot be computed)."""
    if rec.gate.reference is False:  # part of a larger rule (a custom JVP's tangent): trusted
        return None, ""
    diff = [k for k, n in enumerate(needs) if n]
    not_float = [
        k for k in diff if not all(is_float(x) for x in jax.tree_util.tree_leaves(rec.inputs[k]))
    ]
    if not_float:
        return None, (
            f"no reference: input {not_float[0]} needs a gradient but is not float, "
            "and jax.vjp differentiates float inputs only"
        )
    _, forward, _ = gate_functions(rec.gate, rec.inputs, rec.static, diff)
    if rec.multi:  # integer outputs take float0 cotangents
        leaves = [
            np.zeros(np.shape(o), jax.dtypes.float0) if i is None else gi
            for gi, i, o in zip(rec.out_tree.flatten_up_to(g), rec.out_ids, rec.outs)
        ]
        g = jax.tree_util.tree_unflatten(rec.out_tree, leaves)
    try:
        res = iter(jax.vjp(forward, *[rec.inputs[k] for k in diff])[1](g))
    except Exception as e:  # reported as what it is: this forward has no JAX reference
        first = (str(e).splitlines() or [""])[0]
        return None, f"no reference: jax.vjp of its forward raised {type(e).__name__}: {first}"
    return tuple(next(res) if n else None for n in needs), ""


def _error(mine, ref, x, rtol):
    """(relative error, tolerance) of one input's gradient (the worst leaf of a pytree input);
    None from the VJP means zeros."""
    worst = (0.0, rtol if rtol is not None else tolerance("model", "float32"))
    mine_leaves = (
        jax.tree_util.tree_leaves(x)
        if mine is None
        else jax.tree_util.tree_structure(x).flatten_up_to(mine)
    )
    for m, r, leaf in zip(
        mine_leaves, jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(x)
    ):
        m = np.zeros(np.shape(leaf)) if mine is None or m is None else np.asarray(m, np.float64)
        tol = rtol if rtol is not None else tolerance("model", jnp.result_type(leaf))
        err = rel_error(m, r)
        err = err if np.isfinite(err) else float("inf")
        if err / tol > worst[0] / worst[1]:
            worst = (err, tol)
    return worst
