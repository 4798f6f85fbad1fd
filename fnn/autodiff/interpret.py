"""The jaxpr interpreter: a JAX program replayed equation by equation onto fnn's tape.

`fnn.grad(f)` first traces f to a jaxpr (`jax.make_jaxpr`: tracing, not differentiation). The
interpreter then walks the equations with an environment dict, as autodidax's `eval_jaxpr`
does: an equation none of whose inputs depends on the differentiated inputs is evaluated as
it is (JAX binds it); any other equation goes to its primitive's rule in `rules`:

  a Gate          the primitive's gate (forward: bind the primitive; a hand-written VJP),
                  applied to the boxed inputs, so it is recorded on the tape like any gate;
  a callable      `rule(interp, eqn, invals) -> outvals` for structure: a nested `jit` or a
                  `custom_jvp_call` interpreted in place, control flow with its own gate;
  NO_GRADIENT     outputs that carry no gradient (comparisons, integer results): evaluated on
                  the raw values.

An fnn gate called inside f appears in the jaxpr as one `remat` equation whose policy is a
`GateCall` (see `tape.apply`); the interpreter applies the gate itself there, so its fused
hand-written rule is used rather than the primitives of its forward.

A primitive without a rule raises `MissingRuleError` naming the primitive, its parameters,
the shapes and the user's source line.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.extend import core as jcore
from jax.extend import source_info_util

from fnn.autodiff.gate import Gate
from fnn.autodiff.tape import GateCall, Traced, apply
from fnn.errors import GateError, MissingRuleError, describe


class _NoGradient:
    """The rule of a primitive whose outputs carry no gradient: evaluate on raw values."""

    def __repr__(self):
        return "NO_GRADIENT"


NO_GRADIENT = _NoGradient()

Rule = Any  # Gate | Callable[[Interpreter, eqn, list], list] | NO_GRADIENT


def raw(x):
    return x.value if isinstance(x, Traced) else x


def site_of(eqn) -> str:
    """'file:line' of the user's code that made this equation (as call_site gives for gates)."""
    where = source_info_util.summarize(eqn.source_info).split(" (")[0]
    parts = where.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return f"{parts[0]}:{parts[1]}"
    return where


def scope_of(eqn) -> str:
    """The jax.named_scope path the equation was made in ('' outside any)."""
    return str(eqn.source_info.name_stack)


class Interpreter:
    """Evaluates jaxprs with `rules` (primitive -> rule), recording gates on the tape."""

    def __init__(self, rules: Mapping[Any, Rule], *, fname: str = "fnn.grad", scope: str = ""):
        # read-only and opaque to pytrees: the table travels as static metadata of the loop,
        # branch and checkpoint gates (a dict would be flattened, its primitive keys sorted)
        self.rules = rules if isinstance(rules, MappingProxyType) else MappingProxyType(dict(rules))
        self.fname = fname
        self.scope = scope  # the layer path a loop body or branch runs in ('' at the top)

    # -- running ---------------------------------------------------------------------------
    def run(self, jaxpr, consts, args, *, scope: str | None = None) -> list:
        """Evaluate `jaxpr` (a Jaxpr) on `consts` and `args` (raw values or Traced); its gates
        are recorded in `scope` (default: the interpreter's own) joined with their own."""
        scope = self.scope if scope is None else scope
        env: dict = {}
        for v, x in zip(jaxpr.constvars, consts):
            env[v] = x
        for v, x in zip(jaxpr.invars, args):
            env[v] = x

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            outs = self.eqn(eqn, invals, scope)
            for v, o in zip(eqn.outvars, outs):
                if not isinstance(v, jcore.DropVar):
                    env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def run_closed(self, closed, args, *, scope: str | None = None) -> list:
        return self.run(closed.jaxpr, closed.consts, args, scope=scope)

    def eqn(self, eqn, invals, scope: str = "") -> list:
        """The outputs of one equation (a list, one value per outvar)."""
        prim = eqn.primitive
        call = eqn.params.get("policy") if prim.name == "remat2" else None
        if isinstance(call, GateCall) and call.fits(eqn):
            return self.gate_call(call, eqn, invals, scope)
        if not any(isinstance(x, Traced) for x in invals):
            return self.evaluate(eqn, invals)
        rule = self.rules.get(prim)
        if rule is None:
            raise MissingRuleError(self.missing(eqn, invals))
        if rule is NO_GRADIENT:
            return self.evaluate(eqn, [raw(x) for x in invals])
        if isinstance(rule, Gate):
            if any(_is_complex(v.aval) for v in eqn.outvars):
                raise TypeError(
                    f"{self.fname}: the JAX primitive '{prim.name}' at {site_of(eqn)} makes a "
                    f"complex value ({', '.join(str(v.aval) for v in eqn.outvars)}) from the "
                    "differentiated inputs; fnn's rules are written for real values and do not "
                    "differentiate complex ones.")
            out = apply(rule, tuple(invals), dict(prim.get_bind_params(eqn.params)),
                        site=site_of(eqn), scope=_join(scope, scope_of(eqn)))
            return list(out) if prim.multiple_results else [out]
        return list(rule(self, eqn, invals, scope))

    @staticmethod
    def evaluate(eqn, invals) -> list:
        """Bind the equation's primitive on raw values (JAX's own evaluation)."""
        params = eqn.primitive.get_bind_params(eqn.params)
        with source_info_util.user_context(eqn.source_info.traceback,
                                           name_stack=eqn.source_info.name_stack):
            out = eqn.primitive.bind(*invals, **params)
        return list(out) if eqn.primitive.multiple_results else [out]

    def gate_call(self, call: "GateCall", eqn, invals, scope) -> list:
        """An fnn gate applied inside the traced function: apply the gate itself."""
        extra, dynamic = invals[:len(invals) - call.n_dynamic], invals[len(invals) - call.n_dynamic:]
        if any(isinstance(x, Traced) for x in extra):
            raise GateError(
                f"the forward of gate '{call.gate.name}' (called at {call.site}) uses a value "
                "that depends on the differentiated inputs but did not come in through its "
                "positional inputs (a closure or a global). A gate's forward computes on raw "
                f"values, so that value's gradient would bypass the hand-written VJP of "
                f"'{call.gate.name}': pass it as a positional input instead.")
        out = apply(call.gate, call.arguments(dynamic), call.static, site=call.site,
                    scope=_join(scope, scope_of(eqn)))
        return jax.tree_util.tree_leaves(out)

    # -- errors -------------------------------------------------------------------------------
    def missing(self, eqn, invals) -> str:
        prim = eqn.primitive
        params = ", ".join(f"{k}={_short(v)}" for k, v in eqn.params.items())
        shapes = ", ".join(describe(raw(x)) for x in invals)
        return (
            f"{self.fname}: no hand-written rule for the JAX primitive '{prim.name}' "
            f"({params}) applied to ({shapes}) at {site_of(eqn)}. Declare one with the API "
            f"fnn's own rules use, e.g.\n"
            f"    rule = fnn.primitive_gate(<module>.{prim.name}_p)\n"
            f"    @rule.defvjp\n"
            f"    def rule_vjp(g, saved, **params): ...   # one gradient per input\n"
            f"and pass it: {self.fname.split('(')[0]}(f, rules=[rule]), or for a block "
            f"`with fnn.rules(rule): ...`.")


def _is_complex(aval) -> bool:
    dtype = getattr(aval, "dtype", None)
    return dtype is not None and np.issubdtype(dtype, np.complexfloating)


def join_scope(outer: str, inner: str) -> str:
    """Two layer paths as one: 'mlp' and '1_lstm' -> 'mlp/1_lstm' (either may be '')."""
    return f"{outer}/{inner}" if outer and inner else outer or inner


_join = join_scope


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def make_jaxpr(f: Callable, args, *, gate_calls: bool = True):
    """jax.make_jaxpr of f with fnn gates appearing as GateCall equations (gate_calls=True)."""
    from fnn.autodiff.tape import tracing_for_fnn

    with tracing_for_fnn(gate_calls):
        return jax.make_jaxpr(f)(*args)


