"""`check_custom_rules`: is a library's custom gradient what it claims?

Every function with a custom derivative (jax.custom_vjp / jax.custom_jvp: jax.nn.relu, optax's
safe norms, a gradient-reversal layer, an ODE solver's adjoint) that `f` calls is checked where
`f` calls it, at the arguments it really gets there:

    for c in fnn.check.check_custom_rules(loss, params, x, y):
        print(c.name, c.kind, c.site, c.vs_primal, c.vs_numeric, c.verdict)

For each, at one random cotangent (seeded):
  rule       its custom rule's VJP, as fnn.grad (and jax.grad) use it
  primal     the VJP of its primal function, by fnn's rules for the primitives inside it
             (fnn.grad(f, custom_rules="primal"))
  numeric    central differences of the function (float64 arguments give meaningful ones)
vs_primal and vs_numeric are rel_error(rule, primal) and rel_error(rule, numeric). The verdict:
  "agrees"                      the rule equals its primal's derivative (and the numerics)
  "differs on purpose?"         the rule differs from the function's true derivative while the
                                primal's derivative agrees with the numerics: a surrogate
                                (straight-through, reversal, clipping) or a wrong rule
  "finite where primal is not"  the primal's derivative has NaN/inf, the rule does not (a
                                stabilised function at its singular point: what it is for)
  "rule not finite"             the rule gives NaN/inf
  "primal derivative unreliable here"  the rule agrees with the numerics but the primal's
                                derivative does not (a kink, or an unstable formula)
Calls inside a loop body or a branch are checked where they can be reached with concrete
values: the top level of f and nested jit/custom functions (`CustomRuleCheck.site` names the
user's line).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore
from jax.extend.core import primitives as P

from fnn.autodiff import is_float
from fnn.autodiff.interpret import site_of
from fnn.autodiff.structural.custom import function_name
from fnn.check.numeric import numerical_vjp, rel_error
from fnn.check.tolerances import tolerance
from fnn.errors import describe
from fnn.transforms import vjp as fnn_vjp

KINDS = {P.custom_jvp_call_p: "custom_jvp", P.custom_vjp_call_p: "custom_vjp"}


@dataclasses.dataclass
class CustomRuleCheck:
    """One call of a function with a custom derivative: see the module docstring."""

    name: str
    kind: str  # "custom_jvp" or "custom_vjp"
    site: str
    inputs: str  # 'f64[3,4], f64[4]'
    dtype: str
    vs_primal: float
    vs_numeric: float | None  # None: no float input to take differences along
    primal_vs_numeric: float | None
    rule_finite: bool
    primal_finite: bool

    @property
    def verdict(self) -> str:
        tol = tolerance("model", self.dtype)
        num_tol = (
            tolerance("numeric", "float64")
            if self.dtype == "float64"
            else tolerance("numeric", self.dtype)
        )
        if not self.rule_finite:
            return "rule not finite"
        if not self.primal_finite:
            return "finite where primal is not"
        if self.vs_primal <= tol:
            return "agrees"
        if self.primal_vs_numeric is not None and self.primal_vs_numeric <= num_tol:
            return "differs on purpose?"
        if self.vs_numeric is not None and self.vs_numeric <= num_tol:
            return "primal derivative unreliable here"
        return "differs"


def check_custom_rules(f, *args, seed: int = 0) -> list[CustomRuleCheck]:
    """Check each custom_jvp/custom_vjp function that `f(*args)` calls, where it calls it.

    At one random cotangent, its custom rule's VJP is compared with the VJP of its primal
    function by fnn's rules (`custom_rules="primal"`) and with central differences, at the
    arguments it really gets (fnn.check.custom_rules describes the verdicts). Calls inside a loop body
    or a branch are checked where they can be reached with concrete values.

    Args:
        f: the function (any JAX function).
        *args: its arguments.
        seed: the seed of the random cotangents.

    Returns:
        A CustomRuleCheck per call (name, kind, site, vs_primal, vs_numeric, verdict); [] when `f`
        calls none.
    """
    closed = jax.make_jaxpr(f)(*args)
    calls: list = []
    _collect(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args), calls, None)
    rng = np.random.default_rng(seed)
    return [_check(eqn, invals, site, rng) for eqn, invals, site in calls]


def _collect(jaxpr, consts, args, calls, enclosing) -> None:
    """(equation, concrete inputs, site) of every custom call, evaluating jaxpr with JAX and
    descending into nested jit and custom functions."""
    env = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    read = lambda v: v.val if isinstance(v, jcore.Literal) else env[v]
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        site = site_of(eqn, enclosing)
        if eqn.primitive in KINDS:
            calls.append((eqn, invals, site))
        for key in ("jaxpr", "call_jaxpr"):
            sub = eqn.params.get(key)
            if isinstance(sub, jcore.ClosedJaxpr) and len(sub.jaxpr.invars) == len(invals):
                _collect(sub.jaxpr, sub.consts, invals, calls, site)
        outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
        env.update(zip(eqn.outvars, outs if eqn.primitive.multiple_results else [outs]))


def _check(eqn, invals, site, rng) -> CustomRuleCheck:
    n = eqn.params["num_consts"]
    diff = [i for i, x in enumerate(invals) if i >= n and is_float(x)]
    d = [jnp.asarray(invals[i]) for i in diff]

    def function(*dargs):
        full = list(invals)
        for i, x in zip(diff, dargs):
            full[i] = x
        return tuple(eqn.primitive.bind(*full, **eqn.primitive.get_bind_params(eqn.params)))

    outs = jax.eval_shape(function, *d)
    ct = tuple(
        jnp.asarray(rng.standard_normal(o.shape), o.dtype)
        if jnp.issubdtype(o.dtype, jnp.inexact)
        else np.zeros(o.shape, jax.dtypes.float0)
        for o in outs
    )
    rule = fnn_vjp(function, *d)[1](ct)
    primal = fnn_vjp(function, *d, custom_rules="primal")[1](ct)
    numeric = numerical_vjp(function, d, ct) if d else None
    finite = lambda gs: all(bool(jnp.all(jnp.isfinite(g))) for g in gs)
    dtype = jnp.result_type(*d).name if d else "float32"
    return CustomRuleCheck(
        name=function_name(eqn),
        kind=KINDS[eqn.primitive],
        site=site,
        inputs=", ".join(describe(jnp.asarray(x)) for x in invals[n:]),
        dtype=dtype,
        vs_primal=_error(rule, primal),
        vs_numeric=None if numeric is None else _error(rule, numeric),
        primal_vs_numeric=None if numeric is None else _error(primal, numeric),
        rule_finite=finite(rule),
        primal_finite=finite(primal),
    )


def _error(a, b) -> float:
    pairs = list(zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    return max((float(rel_error(x, y)) for x, y in pairs), default=0.0)
