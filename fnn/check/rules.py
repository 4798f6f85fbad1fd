"""Checking backward rules that are not the exact gradient (fnn.rulebook, or a user's fnn.Rule).

A surrogate rule is judged on two things: that it follows its own declared formula (the rule
against jax.vjp of its `reference` function, at the gate's inputs), and how far it is from the
exact gradient (jax.vjp of the gate's forward): cosine similarity and relative error, reported,
not judged. An exact rule (kind "exact") must equal the exact gradient.

    check_rule(rulebook.fast_sigmoid(2.0), ops.spike, (x,), {"threshold": 0.5})   # a RuleCheck
    check_library()                                                               # every rule
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff.backward import call_vjp
from fnn.autodiff.overrides import Rule
from fnn.check.numeric import rel_error
from fnn.check.tolerances import tolerance
from fnn.ops import rulebook


@dataclasses.dataclass
class RuleCheck:
    rule: str
    gate: str
    kind: str
    formula: str
    formula_error: float | None  # the rule vs jax.vjp of its reference (None: none declared)
    cos: float  # with the exact gradient (nan where the exact gradient is 0)
    rel: float  # relative distance from the exact gradient
    error: str | None = None

    @property
    def ok(self) -> bool:
        if self.error is not None:
            return False
        tol = tolerance("gate", "float64")
        if self.kind == "exact":
            return self.rel <= tol
        return self.formula_error is None or self.formula_error <= tol

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return f"FAIL: {self.error}"
        if self.ok:
            return (
                "ok"
                if self.kind == "exact" or self.formula_error is not None
                else "ok (no formula declared)"
            )
        what = (
            "differs from the exact gradient"
            if self.kind == "exact"
            else "does not follow its formula"
        )
        return f"FAIL: {what}"


def check_rule(
    rule: Rule, gate, inputs: tuple, static: dict | None = None, *, seed: int = 0
) -> RuleCheck:
    """`rule` as the backward of `gate` at `inputs` (float64), with a random upstream gradient."""
    static = dict(static or {})
    with jax.enable_x64(True):
        inputs = tuple(
            jnp.asarray(x, jnp.float64) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x
            for x in inputs
        )
        forward = lambda *xs: gate.forward(*xs, **static)[0]
        out, exact_pull = jax.vjp(forward, *inputs)
        g = jnp.asarray(np.random.default_rng(seed).standard_normal(np.shape(out)), out.dtype)
        needs = tuple(True for _ in inputs)
        row = RuleCheck(rule.name, gate.name, rule.kind, rule.formula, None, float("nan"), 0.0)
        try:
            saved = gate.forward(*inputs, **static)[1]
            mine = call_vjp(gate, g, saved, needs, static, rule=rule, inputs=inputs, out=out)
            exact = exact_pull(g)
            a, b = _flat(mine, inputs), _flat(exact, inputs)
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            row.cos = float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")
            row.rel = rel_error(a, b)
            if rule.reference is not None:
                ref = jax.vjp(lambda *xs: rule.reference(*xs, **static), *inputs)[1](g)
                row.formula_error = rel_error(a, _flat(ref, inputs))
        except Exception as e:  # a rule that crashes is a finding: keep why
            row.error = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    return row


def _flat(grads, inputs):
    parts = [
        np.zeros(np.size(x)) if d is None else np.ravel(np.asarray(d, np.float64))
        for d, x in zip(grads, inputs)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def library_cases(seed: int = 0) -> list:
    """(rule, gate, inputs, static) for every rule of the library (fnn.rulebook.LIBRARY), at the
    representative inputs each entry declares."""
    rng = np.random.default_rng(seed)
    return [case for entry in rulebook.LIBRARY for case in entry.cases(rng)]


def check_library(seed: int = 0) -> list[RuleCheck]:
    """check_rule for every rule of the library (library_cases: each entry of
    fnn.rulebook.LIBRARY, at its declared inputs)."""
    return [
        check_rule(rule, gate, inputs, static, seed=seed)
        for rule, gate, inputs, static in library_cases(seed)
    ]
