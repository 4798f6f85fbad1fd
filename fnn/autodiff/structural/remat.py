"""jax.checkpoint (remat) under fnn.grad, with any policy, and jax.ad_checkpoint.checkpoint_name.

A checkpoint is one gate. Its forward runs the body and keeps its inputs and the values its
policy saves; its backward runs the body's forward again from those inputs, taking the kept
values instead of recomputing them, then walks the body's tape backward.

The policy is JAX's (any of jax.checkpoint_policies, or a function): as JAX does,
`policy(primitive, *[v.aval for v in eqn.invars], **eqn.params)` is asked about each equation
of the body, and answers True / Saveable (keep), False / Recompute, or Offloadable(src, dst)
(keep it in memory `dst`: moved there in the forward, back to `src` in the backward). The
equations of a nested jit or custom_jvp/custom_vjp function, interpreted in place, are asked
one by one. An equation the policy keeps keeps its outputs and what its gate's backward needs
beyond its inputs (saved values that are neither an input nor an output of the gate); the
backward records its gate from those, without running its forward. A scan, cond, nested
checkpoint or fnn gate (something with a body of its own) is one unit: kept whole when the
policy keeps any equation inside it, else recomputed whole (a nested checkpoint then applies its
own policy). None / nothing_saveable keeps nothing but the inputs; everything_saveable keeps
the body's whole tape (nothing is recomputed).

The backward's re-run is traced to a jaxpr and only the equations its result needs are run, so
a value recomputed only to reach a kept one is not recomputed (JAX's partial evaluation leaves
those out too).

checkpoint_name(x, name) is the identity: its gradient passes through, and policies such as
save_only_these_names select values by its name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.ad_checkpoint import Offloadable, Recompute, Saveable, checkpoint_name
from jax.extend import core as jcore
from jax.extend.core import primitives as P

from fnn.autodiff import nans, overrides
from fnn.autodiff.backward import backward
from fnn.autodiff.case_values import cnormal, normal
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.interpret import Interpreter
from fnn.autodiff.primitive_cases import case
from fnn.autodiff.structural import control, custom
from fnn.autodiff.structural.loops import (
    FNN_PARAMS,
    Body,
    body_interpreter,
    control_rule,
    pullback,
    spec,
)
from fnn.autodiff.tape import GateCall, Tape, Traced, is_float, supplying
from fnn.errors import GateError, describe

KEEP, RECOMPUTE = "keep", "recompute"  # what a policy says of an equation (or an Offloadable)


def policy_name(policy) -> str:
    """How a checkpoint policy is named in messages: its function's qualified name (which says
    what made it: save_only_these_names.<locals>.policy) or its repr."""
    return getattr(policy, "__qualname__", None) or repr(policy)


def _keeps_nothing(policy) -> bool:
    """None / nothing_saveable; also a GateCall (an fnn gate's own call, interpreted because it
    was transformed since, by a vmap or jvp inside the traced function): recomputed."""
    return (
        policy is None
        or policy is jax.checkpoint_policies.nothing_saveable
        or isinstance(policy, GateCall)
    )


def _holds_body(eqn) -> bool:
    return any(True for _ in jcore.jaxprs_in_params(eqn.params))


def decide(policy, eqn, site: str = ""):
    """What `policy` says of one equation, asked as JAX asks it: KEEP, RECOMPUTE or an
    Offloadable. An equation with a body of its own is one unit: kept when any equation inside
    it is (offloaded when one is offloaded and none kept)."""
    if _holds_body(eqn):
        found = RECOMPUTE
        for sub in jcore.jaxprs_in_params(eqn.params):
            for inner in sub.eqns:
                said = decide(policy, inner, site)
                if said == KEEP:
                    return KEEP
                if isinstance(said, Offloadable):
                    found = said
        return found
    avals = [v.aval for v in eqn.invars]
    said = policy(eqn.primitive, *avals, **eqn.params)
    if isinstance(said, (bool, np.bool_)):
        return KEEP if said else RECOMPUTE
    if isinstance(said, type(Saveable)):
        return KEEP
    if isinstance(said, type(Recompute)):
        return RECOMPUTE
    if isinstance(said, Offloadable):
        return _check_offload(said, policy, site)
    shapes = ", ".join(a.str_short() for a in avals)
    raise GateError(
        f"fnn.grad: the checkpoint at {site or '?'} has policy {policy_name(policy)}, which "
        f"returned {describe(said) if hasattr(said, 'shape') else repr(said)} for the primitive "
        f"'{eqn.primitive.name}' applied to ({shapes}); a checkpoint policy returns True or "
        "False, or jax.ad_checkpoint.Saveable, Recompute or Offloadable(src, dst)."
    )


def _space(kind: str):
    """The memory space of a memory kind, as JAX maps them (pinned_host: the host, else the
    device)."""
    return jax.memory.Space.Host if kind == "pinned_host" else jax.memory.Space.Device


def memory_kinds() -> list[str]:
    """The memory kinds of the default device ('device', 'pinned_host', ...)."""
    return sorted({m.kind for m in jax.local_devices()[0].addressable_memories()})


def _check_offload(said, policy, site):
    """An Offloadable to or from the host, where the device has host memory; else refused."""
    kinds = memory_kinds()
    if "pinned_host" in (said.src, said.dst) and "pinned_host" not in kinds:
        raise GateError(
            f"fnn.grad: the checkpoint at {site or '?'} has policy {policy_name(policy)}, which "
            f"offloads values to memory '{said.dst}' (from '{said.src}'), but the device "
            f"{jax.local_devices()[0]} has only the memories {kinds}. Use a policy that keeps "
            "or recomputes them (save_only_these_names, checkpoint_dots, ...)."
        )
    return said


def _move(x, kind: str):
    return jax.device_put(x, _space(kind))


@dataclasses.dataclass
class _Entry:
    """What the forward did with one equation: `how` (KEEP, RECOMPUTE or an Offloadable) and,
    when kept, where the backward finds what the equation made. Per gate it recorded:
    (slots of its outputs, their tree, slots of its saved values, their tree); with no gate
    recorded (an equation evaluated as it is, checkpoint_name), a slot per output. A slot is
    ("in", k) the gate's k-th input leaf, ("out", j) its j-th output, ("kept", m) the m-th kept
    value, ("alias", m) a kept value standing for a traced value passed through, or ("fixed",
    value) a value that is not an array."""

    eqn: Any
    how: Any
    records: list = dataclasses.field(default_factory=list)
    outs: list = dataclasses.field(default_factory=list)


class Plan:
    """A checkpoint forward's entries, one per equation in the order they ran, for the re-run
    in its backward. Opaque to pytrees: a fixed part of what the gate saves (a loop stacks the
    kept values, not this)."""

    def __init__(self):
        self.entries: list[_Entry] = []


class PolicyInterpreter(Interpreter):
    """Interprets a checkpoint's body under its policy. In the forward (`kept` None) it asks
    the policy about each equation and keeps what it says; in the backward's re-run it follows
    the forward's plan, recording each kept equation's gate from the kept values."""

    def __init__(self, rules, scope, *, policy=None, site="", plan=None, kept=None):
        super().__init__(body_interpreter(rules).rules, scope=scope)
        self.policy, self.site = policy, site
        self.replaying = kept is not None
        self.plan = Plan() if plan is None else plan
        self.kept = [] if kept is None else list(kept)
        self.stashed = {}  # id -> (value, position in kept), in the forward
        self.position = 0  # in the plan, while replaying
        self.inside = False  # running a kept equation: what it runs in place follows it

    def eqn(self, eqn, invals, scope="", live=None):
        if self.inside or self._in_place(eqn, invals):
            return super().eqn(eqn, invals, scope, live)
        if self.replaying:
            entry = self.plan.entries[self.position]
            self.position += 1
            if entry.eqn is not eqn:
                raise AssertionError("a checkpoint's re-run left the order of its forward")
            if entry.how == RECOMPUTE:
                return super().eqn(eqn, invals, scope, live)
            return self._reuse(entry, eqn, invals, scope)
        how = decide(self.policy, eqn, self.site)
        if how == RECOMPUTE:
            self.plan.entries.append(_Entry(eqn, how))
            return super().eqn(eqn, invals, scope, live)
        return self._keep(eqn, invals, scope, how)

    def _in_place(self, eqn, invals) -> bool:
        """A nested jit, a custom_jvp function's rule or (custom_rules="primal") a custom
        function's primal, interpreted in place: its equations are asked one by one (as JAX's
        partial evaluation goes into them). A custom_vjp function is one gate, one unit."""
        if isinstance(eqn.params.get("policy"), GateCall) or not any(
            isinstance(x, Traced) for x in invals
        ):
            return False
        rule = self.rules.get(eqn.primitive)
        return rule in (control.jit, custom.custom_jvp_call, custom.primal_function)

    def _run(self, eqn, invals, scope):
        self.inside = True
        try:
            return super().eqn(eqn, invals, scope)
        finally:
            self.inside = False

    # -- forward: keep ----------------------------------------------------------------------
    def _keep(self, eqn, invals, scope, how):
        tape = next((x.tape for x in invals if isinstance(x, Traced)), None)
        start = len(tape.records) if tape is not None else 0
        outs = self._run(eqn, invals, scope)
        entry = _Entry(eqn, how)
        recs = tape.records[start:] if tape is not None else []
        for rec in recs:
            ins = jax.tree_util.tree_leaves(rec.inputs)
            saved, saved_tree = jax.tree_util.tree_flatten(rec.saved)
            entry.records.append(
                (
                    [self._slot(o, ins, (), how) for o in rec.outs],
                    rec.out_tree,
                    [self._slot(x, ins, rec.outs, how) for x in saved],
                    saved_tree,
                )
            )
        if not recs:
            entry.outs = [
                ("alias", self._stash(o.value, how))
                if isinstance(o, Traced)
                else self._slot(o, (), (), how)
                for o in outs
            ]
        self.plan.entries.append(entry)
        return outs

    def _slot(self, leaf, ins, outs, how):
        for k, x in enumerate(ins):
            if leaf is x:
                return ("in", k)
        for j, o in enumerate(outs):
            if leaf is o:
                return ("out", j)
        if isinstance(leaf, (jax.Array, jax.core.Tracer)):
            return ("kept", self._stash(leaf, how))
        return ("fixed", leaf)

    def _stash(self, x, how) -> int:
        """x's position among the kept values (a value kept twice is kept once)."""
        if id(x) not in self.stashed:
            self.kept.append(_move(x, how.dst) if isinstance(how, Offloadable) else x)
            self.stashed[id(x)] = (x, len(self.kept) - 1)
        return self.stashed[id(x)][1]

    # -- backward's re-run: reuse -------------------------------------------------------------
    def _reuse(self, entry, eqn, invals, scope):
        if entry.records:
            pending = iter(entry.records)

            def supply(gate, raw, static):  # the gate's output and saved values, as kept
                out_slots, out_tree, saved_slots, saved_tree = next(pending)
                ins = jax.tree_util.tree_leaves(raw)
                outs = [self._value(s, ins, (), entry) for s in out_slots]
                saved = [self._value(s, ins, outs, entry) for s in saved_slots]
                return (
                    jax.tree_util.tree_unflatten(out_tree, outs),
                    jax.tree_util.tree_unflatten(saved_tree, saved),
                )

            with supplying(supply):
                outs = self._run(eqn, invals, scope)
            if next(pending, None) is not None:
                raise AssertionError("a checkpoint's re-run recorded fewer gates than its forward")
            return outs
        passed = (
            self._run(eqn, invals, scope)
            if any(s[0] == "alias" for s in entry.outs)
            else [None] * len(entry.outs)
        )
        return [
            type(p)(self._value(s, (), (), entry), p.tape, p.node)
            if s[0] == "alias"
            else self._value(s, (), (), entry)
            for s, p in zip(entry.outs, passed)
        ]

    def _value(self, slot, ins, outs, entry):
        kind, x = slot
        if kind == "in":
            return ins[x]
        if kind == "out":
            return outs[x]
        if kind in ("kept", "alias"):
            v = self.kept[x]
            return _move(v, entry.how.src) if isinstance(entry.how, Offloadable) else v
        return x


def _needed(jaxpr) -> list:
    """The equations of `jaxpr` its outputs depend on (and those with effects), in order."""
    live = {v for v in jaxpr.outvars if isinstance(v, jcore.Var)}
    kept = []
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(v in live for v in eqn.outvars):
            kept.append(eqn)
            live.update(v for v in eqn.invars if isinstance(v, jcore.Var))
    return kept[::-1]


def pruned(fn, *args):
    """fn(*args) running only the equations its result needs: fn traced to a jaxpr, then its
    needed equations evaluated (a value fn computes but its result does not use is not).
    Under fnn.debug_nans fn runs as it is: the checks need each gate's concrete values."""
    if nans.active():
        return fn(*args)
    closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
    env = dict(zip(closed.jaxpr.constvars, closed.consts))
    env.update(zip(closed.jaxpr.invars, jax.tree_util.tree_leaves(args)))
    read = lambda v: v.val if isinstance(v, jcore.Literal) else env[v]
    for eqn in _needed(closed.jaxpr):
        env.update(zip(eqn.outvars, Interpreter.evaluate(eqn, [read(v) for v in eqn.invars])))
    return jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(shapes), [read(v) for v in closed.jaxpr.outvars]
    )


def _remat_forward(
    *args, jaxpr, prevent_cse, differentiated, policy, rules=None, scope="", site="", **params
):
    closed = jcore.ClosedJaxpr(jaxpr, ())
    if policy is jax.checkpoint_policies.everything_saveable:  # the whole tape: a plain call
        body = Body(body_interpreter(rules, scope), closed, list(args))
        return tuple(body.outs), (
            "kept",
            body.template,
            body.in_nodes,
            body.out_nodes,
            body.residuals,
            [spec(a) for a in args],
        )
    if _keeps_nothing(policy):
        outs = body_interpreter(rules, scope).run_closed(closed, list(args))
        return tuple(outs), ("rerun", args, [], None, rules, overrides.active(), scope)
    interp = PolicyInterpreter(rules, scope, policy=policy, site=site)
    tape = Tape()
    outs = interp.run_closed(closed, [tape.input(a) if is_float(a) else a for a in args])
    return (
        tuple(o.value if isinstance(o, Traced) else o for o in outs),
        ("rerun", args, interp.kept, interp.plan, rules, overrides.active(), scope),
    )


@primitive_gate(
    P.remat_p,
    forward=_remat_forward,
    params=("jaxpr", "prevent_cse", "differentiated", "policy", "site") + FNN_PARAMS,
    complex=True,
)
def remat(g, saved, *, jaxpr, prevent_cse, needs, **params):
    """jax.checkpoint: its body, whose values its policy does not keep are recomputed.  Local
    gradient: the body's backward, after running its forward again from the saved inputs and
    the values the policy kept (everything_saveable: from the body's whole tape)."""
    if saved[0] == "kept":
        _, template, in_nodes, out_nodes, residuals, specs = saved
        cts = pruned(
            lambda residuals, g: [
                d if need else None
                for d, need in zip(
                    pullback(template, in_nodes, out_nodes, residuals, (), g, specs), needs
                )
            ],
            list(residuals),
            list(g),
        )
        return tuple(cts)
    _, args, kept, plan, rules, in_effect, scope = saved
    if prevent_cse:  # keep XLA from reusing the forward's values instead of recomputing them,
        # and from recomputing before the backward reaches here: the barrier ties the inputs
        # (and kept values) to the incoming cotangent (XLA CPU keeps it only when compiled
        # with fnn.runtime.remat_compiler_options())
        args, kept, g = lax.optimization_barrier((tuple(args), tuple(kept), tuple(g)))
    closed = jcore.ClosedJaxpr(jaxpr, ())

    def rerun(args, kept, g):  # the body's forward again, then its backward
        with overrides.overriding(in_effect):  # the rule overrides the forward ran under
            interp = (
                body_interpreter(rules, scope)
                if plan is None
                else PolicyInterpreter(rules, scope, plan=plan, kept=kept)
            )
            tape = Tape()
            boxed = [tape.input(a) if is_float(a) else a for a in args]
            outs = interp.run_closed(closed, boxed)
            seeds = {}
            for o, gi in zip(outs, g):
                if isinstance(o, Traced):
                    seeds[o.node] = seeds[o.node] + gi if o.node in seeds else gi
            cts = backward(tape, seeds)
        return [
            None
            if not need or not isinstance(b, Traced)
            else cts[b.node]
            if b.node in cts
            else jnp.zeros(np.shape(a), jnp.result_type(a))
            for need, b, a in zip(needs, boxed, args)
        ]

    return tuple(pruned(rerun, args, kept, g))


@remat.defcases
def _remat_cases(rng, dtype):
    f = jax.checkpoint(lambda x, w: jnp.sum(jnp.tanh(x @ w) ** 2, axis=0))
    dots = jax.checkpoint(
        lambda x, w: jnp.sin(jnp.tanh(x @ w) @ w.T), policy=jax.checkpoint_policies.checkpoint_dots
    )
    named = jax.checkpoint(
        lambda x, w: jnp.sum(jnp.cos(checkpoint_name(jnp.tanh(x @ w), "h"))),
        policy=jax.checkpoint_policies.save_only_these_names("h"),
    )
    x, w = normal(rng, (3, 4), dtype), normal(rng, (4, 2), dtype)
    return [
        case(P.remat_p, f, x, w),
        case(P.remat_p, dots, x, w, label="checkpoint_dots"),
        case(P.remat_p, named, x, w, label="save_only_these_names"),
        case(
            P.remat_p,
            dots,
            cnormal(rng, (3, 4), dtype),
            cnormal(rng, (4, 2), dtype),
            label="complex, checkpoint_dots",
        ),
    ]


remat.defkinks(smooth=True)


def name(interp, eqn, invals, scope):
    """jax.ad_checkpoint.checkpoint_name: the identity (its name is for checkpoint policies);
    the gradient passes through."""
    return list(invals)


# the interpreter's rules: the checkpoint's gate (with the rules in use and the user's line),
# and checkpoint_name's
STRUCTURAL = {P.remat_p: control_rule(remat, with_site=True), P.name_p: name}
