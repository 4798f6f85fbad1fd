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

import contextvars
import os
import re
import sys
import sysconfig
from types import MappingProxyType
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from jax.extend import core as jcore
from jax.extend import source_info_util

from fnn.autodiff.gate import Gate
from fnn.autodiff.tape import GateCall, Traced, apply, tracing_for_fnn
from fnn.errors import GateError, MissingRuleError, describe


class _NoGradient:
    """The rule of a primitive whose outputs carry no gradient: evaluate on raw values."""

    def __repr__(self):
        return "NO_GRADIENT"


NO_GRADIENT = _NoGradient()

Rule = Any  # Gate | Callable[[Interpreter, eqn, list], list] | NO_GRADIENT


def raw(x):
    return x.value if isinstance(x, Traced) else x


# code that is not the user's: JAX, fnn, and the libraries installed beside them (Flax,
# Equinox, optax, diffrax, ...); a site names the first frame outside them
_JAX_DIR = os.path.dirname(os.path.abspath(jax.__file__)) + os.sep
_FNN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_LIBRARY_DIRS = tuple(
    {
        _JAX_DIR,
        _FNN_DIR,
        *(
            os.path.join(p, "")
            for p in (sysconfig.get_paths().get("purelib"), sysconfig.get_paths().get("platlib"))
            if p
        ),
    }
)
# the site of the equation whose rule is running (a loop, a nested jit, a custom rule): where an
# equation inside it that JAX traced in library code alone (jnp.linalg's jitted helpers) is
_ENCLOSING: contextvars.ContextVar = contextvars.ContextVar("fnn_enclosing_site", default=None)
# the name of the call being traced ('fnn.grad(loss)'), for the interpreters of loop bodies
_FNAME: contextvars.ContextVar = contextvars.ContextVar("fnn_call_name", default="fnn.grad")


def site_of(eqn, enclosing: str | None = None) -> str:
    """'file:line' of the user's code that made this equation (as call_site gives for gates):
    the innermost frame outside JAX, fnn and installed libraries; else the site of the
    equation it lies in (a function JAX traced once, in its own files); else the innermost
    frame outside JAX and fnn (a library's); else JAX's summary of it. enclosing: the site of
    the equation it lies in, when the caller knows it (else the one whose rule is running)."""
    frames = list(getattr(eqn.source_info.traceback, "frames", None) or ())
    for skip in (_LIBRARY_DIRS, None, (_JAX_DIR, _FNN_DIR)):
        if skip is None:
            enclosing = enclosing or _ENCLOSING.get()
            if enclosing is not None:
                return enclosing
            continue
        for fr in frames:
            name = fr.file_name
            if not name.startswith(skip) and not name.startswith("<frozen"):
                return f"{name}:{fr.line_num}"
    where = source_info_util.summarize(eqn.source_info).split(" (")[0]
    parts = where.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return f"{parts[0]}:{parts[1]}"
    return where or "?"


def scope_of(eqn) -> str:
    """The jax.named_scope path the equation was made in ('' outside any)."""
    return str(eqn.source_info.name_stack)


# fnn's own table of rules (fnn.ops.RULES), which the core cannot import: set once by
# fnn.transforms (use_default_rules), where fnn's transforms are bound to it. The interpreter
# hands its table to the structural rules it runs (a loop's gate gets it as its `rules`); this
# one is for a rule run on its own, outside any interpreter (a checker calling a loop's gate, a
# rule whose VJP differentiates a helper function)
_DEFAULT_RULES: list = []


def use_default_rules(rules: Mapping[Any, Rule]) -> None:
    """Make `rules` the table an `Interpreter` made without one uses (fnn.transforms: fnn's)."""
    _DEFAULT_RULES[:] = [rules]


def default_rules() -> Mapping[Any, Rule]:
    """The table set by `use_default_rules` (fnn's own rules, once `fnn` is imported)."""
    if not _DEFAULT_RULES:
        raise GateError(
            "no table of rules to interpret with: import fnn (fnn.transforms makes "
            "fnn.ops.RULES the default) or pass the rules"
        )
    return _DEFAULT_RULES[0]


class Interpreter:
    """Evaluates jaxprs with `rules` (primitive -> rule; None: `default_rules()`), recording
    gates on the tape. A structural rule gets the interpreter (and so its table) as an
    argument, and passes the table on to the bodies it runs."""

    def __init__(
        self, rules: Mapping[Any, Rule] | None = None, *, fname: str | None = None, scope: str = ""
    ):
        rules = default_rules() if rules is None else rules
        # read-only and opaque to pytrees: the table travels as static metadata of the loop,
        # branch and checkpoint gates (a dict would be flattened, its primitive keys sorted)
        self.rules = rules if isinstance(rules, MappingProxyType) else MappingProxyType(dict(rules))
        self.fname = fname or _FNAME.get()  # a loop body's: the call's it runs in
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

        for eqn, live in zip(jaxpr.eqns, self.live(jaxpr)):
            invals = [read(v) for v in eqn.invars]
            if not any(live):  # nothing differentiated needs it (an effect, a stop_gradient's
                # input, an unused value): JAX's own evaluation, no rule needed
                outs = self.evaluate(eqn, [raw(x) for x in invals])
            else:
                outs = self.eqn(eqn, invals, scope, live=live)
            for v, o in zip(eqn.outvars, outs):
                if not isinstance(v, jcore.DropVar):
                    env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def run_closed(self, closed, args, *, scope: str | None = None) -> list:
        return self.run(closed.jaxpr, closed.consts, args, scope=scope)

    def live(self, jaxpr) -> list:
        """Per equation, per output: whether a gradient can flow from it to the jaxpr's
        outputs (a float value used by a live equation that passes gradients, or an output).
        stop_gradient and the rules marked NO_GRADIENT pass none to their inputs."""
        live = {v for v in jaxpr.outvars if isinstance(v, jcore.Var)}
        flags = []
        for eqn in reversed(jaxpr.eqns):
            mine = tuple(v in live for v in eqn.outvars)
            flags.append(mine)
            if (
                any(mine)
                and eqn.primitive is not _STOP_GRADIENT
                and self.rules.get(eqn.primitive) is not NO_GRADIENT
            ):
                live.update(
                    v for v in eqn.invars if isinstance(v, jcore.Var) and _is_inexact(v.aval)
                )
        return flags[::-1]

    def eqn(self, eqn, invals, scope: str = "", live=None) -> list:
        """The outputs of one equation (a list, one value per outvar). live: which outputs a
        gradient can flow from (default all); rules that declare `takes_live` get it."""
        token, name = _ENCLOSING.set(site_of(eqn)), _FNAME.set(self.fname)
        try:
            return self._eqn(eqn, invals, scope, live)
        finally:
            _ENCLOSING.reset(token)
            _FNAME.reset(name)

    def _eqn(self, eqn, invals, scope, live) -> list:
        prim = eqn.primitive
        call = eqn.params.get("policy") if prim.name == "remat2" else None
        if isinstance(call, GateCall) and call.fits(eqn):
            return self.gate_call(call, eqn, invals, scope)
        if not any(isinstance(x, Traced) for x in invals):
            return self.evaluate(eqn, invals)
        rule = self.rules.get(prim)
        if rule is None:
            raise MissingRuleError(self.missing(eqn, invals), primitive=prim)
        if rule is NO_GRADIENT:
            return self.evaluate(eqn, [raw(x) for x in invals])
        if isinstance(rule, Gate):
            out = apply(
                rule,
                tuple(invals),
                dict(prim.get_bind_params(eqn.params)),
                site=site_of(eqn),
                scope=_join(scope, scope_of(eqn)),
            )
            return list(out) if prim.multiple_results else [out]
        if getattr(rule, "takes_live", False):
            return list(
                rule(
                    self,
                    eqn,
                    invals,
                    scope,
                    live=tuple(live) if live is not None else (True,) * len(eqn.outvars),
                )
            )
        return list(rule(self, eqn, invals, scope))

    @staticmethod
    def evaluate(eqn, invals) -> list:
        """Bind the equation's primitive on raw values (JAX's own evaluation)."""
        params = eqn.primitive.get_bind_params(eqn.params)
        with source_info_util.user_context(
            eqn.source_info.traceback, name_stack=eqn.source_info.name_stack
        ):
            out = eqn.primitive.bind(*invals, **params)
        return list(out) if eqn.primitive.multiple_results else [out]

    def gate_call(self, call: "GateCall", eqn, invals, scope) -> list:
        """An fnn gate applied inside the traced function: apply the gate itself."""
        extra, dynamic = (
            invals[: len(invals) - call.n_dynamic],
            invals[len(invals) - call.n_dynamic :],
        )
        if any(isinstance(x, Traced) for x in extra):
            raise GateError(
                f"the forward of gate '{call.gate.name}' (called at {call.site}) uses a value "
                "that depends on the differentiated inputs but did not come in through its "
                "positional inputs (a closure or a global). A gate's forward computes on raw "
                f"values, so that value's gradient would bypass the hand-written VJP of "
                f"'{call.gate.name}': pass it as a positional input instead."
            )
        out = apply(
            call.gate,
            call.arguments(dynamic),
            call.static,
            site=call.site,
            scope=_join(scope, scope_of(eqn)),
        )
        return jax.tree_util.tree_leaves(out)

    # -- errors -------------------------------------------------------------------------------
    def missing(self, eqn, invals) -> str:
        prim = eqn.primitive
        params = ", ".join(f"{k}={_short(v)}" for k, v in eqn.params.items())
        shapes = ", ".join(describe(raw(x)) for x in invals)
        return (
            f"{self.fname}: no hand-written rule for the JAX primitive '{prim.name}' "
            f"({params}) applied to ({shapes}) at {site_of(eqn)}. Declare one with the API "
            f"fnn's own rules use (this runs as it is; then write the rule's body):\n\n"
            f"{rule_template(prim, self.fname)}"
        )


def find_primitive(prim) -> tuple[str, str] | None:
    """(module, attribute) through which `prim` can be imported: jax.extend's table first, then
    public modules, then any loaded module (JAX's private ones, a library's); None if none."""
    from jax.extend.core import primitives as public

    for name, value in vars(public).items():
        if value is prim:
            return public.__name__, name
    found = []
    for mod_name, mod in list(sys.modules.items()):
        try:
            items = list(vars(mod).items())
        except TypeError:
            continue
        for name, value in items:
            if value is prim and not name.startswith("__"):
                private = any(part.startswith("_") for part in mod_name.split("."))
                found.append((private, mod_name.count("."), mod_name, name))
    return min(found)[2:] if found else None


def rule_template(prim, fname: str = "fnn.grad") -> str:
    """Python that declares a rule for `prim` and runs as pasted (its body raises until the
    local gradient is written)."""
    place = find_primitive(prim)
    ident = re.sub(r"\W", "_", prim.name)
    if place is None:
        module, attr = "<the module defining it>", f"{ident}_p"
    else:
        module, attr = place
    call = fname.split("(")[0]
    return (
        f"import fnn\n"
        f"from {module} import {attr}\n\n"
        f"@fnn.primitive_gate({attr})\n"
        f"def {ident}_rule(g, inputs, **params):\n"
        f'    """{prim.name}: the upstream gradient g times the local gradient, one per '
        f'input."""\n'
        f'    raise NotImplementedError("write {prim.name}\'s local gradient here")\n\n'
        f"# then: {call}(f, rules=[{ident}_rule]), or for a block: "
        f"with fnn.rules({ident}_rule): ..."
    )


def _is_inexact(aval) -> bool:
    dtype = getattr(aval, "dtype", None)
    try:
        return dtype is not None and bool(jnp.issubdtype(dtype, jnp.inexact))
    except TypeError:  # an extended dtype (a PRNG key)
        return False


_STOP_GRADIENT = jcore.primitives.stop_gradient_p


def join_scope(outer: str, inner: str) -> str:
    """Two layer paths as one: 'mlp' and '1_lstm' -> 'mlp/1_lstm' (either may be '')."""
    return f"{outer}/{inner}" if outer and inner else outer or inner


_join = join_scope


def _short(v) -> str:
    text = repr(v)
    if "\n" in text or "lambda ;" in text:  # a jaxpr, or a structure of them: named, not dumped
        return f"<{type(v).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def make_jaxpr(f: Callable, args, *, gate_calls: bool = True):
    """jax.make_jaxpr of f with fnn gates appearing as GateCall equations (gate_calls=True)."""
    with tracing_for_fnn(gate_calls):
        return jax.make_jaxpr(f)(*args)
